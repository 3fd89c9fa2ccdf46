"""The planner and the timer together across DST transitions, on a Clock.

``tests/test_cron.py`` checks ``cron.next_run`` alone.  Here the real
:class:`Planner`, :class:`Timer` and :class:`FunctionBuilder` run over the
in-memory Redis and MariaDB of ``tests/fakes.py``: the planner plans each
schedule's next run, the timer claims it at its instant and hands the name back
to the FIFO, the planner plans the run after it, and so on through a clock
change.  What is asserted is the exact list of (schedule, UTC instant) pairs
enqueued, and that each claim happened at the run's own instant on the Clock.

The three schedules of every scenario (DESIGN.md, "Cron and time zones"):

* ``30 1 * * *``    a fixed hour: in a repeated hour, first pass only; in a gap,
                    once at the first instant after the gap.
* ``0 * * * *``     the hour field starts with ``*``: follows real time, so a
                    repeated 01:00 fires in both passes.
* ``*/30 2 * * *``  a fixed hour with two minutes: both fall in New York's
                    spring gap and fire once, together, at 03:00 EDT.
"""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from btu_twisted.fifo import ScheduleFifo
from btu_twisted.jobs.builders import FunctionBuilder
from btu_twisted.planning.planner import Planner
from btu_twisted.timing.timer import Timer
from tests.fakes import FakeDatabase, FakeStore, make_row, run_until

FIXED = "TS-FIXED-0130"      # 30 1 * * *
HOURLY = "TS-HOURLY"         # 0 * * * *
HALF_TWO = "TS-HALF-0200"    # */30 2 * * *
CRONS = {FIXED: "30 1 * * *", HOURLY: "0 * * * *", HALF_TWO: "*/30 2 * * *"}


def utc(text: str) -> int:
    """Unix seconds of ``YYYY-MM-DDTHH:MM`` read as UTC."""
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC).timestamp())


def iso(instant: float) -> str:
    return datetime.fromtimestamp(instant, UTC).strftime("%Y-%m-%dT%H:%MZ")


class DstCase(unittest.TestCase):
    """A Clock at the scenario's start, the fakes, a real Planner, Timer and FunctionBuilder."""

    def start(self, zone: str, at: str, schedules: dict[str, str] = CRONS) -> None:
        """Wire the daemon's core at ``at`` (UTC) with ``schedules`` read in ``zone``,
        and put their names on the FIFO as a full refresh would."""
        self.clock = Clock()
        self.clock.advance(utc(at))
        # Real Redis and adbapi answer on a later reactor turn: latency 0.
        self.store = FakeStore(self.clock, latency=0.0)
        self.db = FakeDatabase(self.clock, latency=0.0)
        self.fifo = ScheduleFifo()
        self.timer = Timer(
            self.clock,
            self.store,  # type: ignore[arg-type]
            self.db,  # type: ignore[arg-type]
            FunctionBuilder(""),
            self.fifo,
            polling_interval=60.0,
        )
        self.planner = Planner(
            self.clock,
            self.fifo,
            self.db,  # type: ignore[arg-type]
            self.store,  # type: ignore[arg-type]
            default_zone="UTC",  # the schedules carry their own zone
            on_planned=self.timer.planned,
            dependencies=(self.db.health, self.store.health),
        )
        for name, cron in schedules.items():
            self.db.put(make_row(name, cron, zone=zone))
        self.timer.startService()
        self.planner.startService()
        self.addCleanup(self.stop)
        self.fifo.extend(sorted(schedules))

    def stop(self) -> None:
        """Stop both services and check that nothing is left on the Clock."""
        stops = [_deferred(s.stopService()) for s in (self.planner, self.timer)]
        run_until(self.clock, self.clock.seconds())
        for d in stops:
            self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def run_through(self, until: str) -> None:
        """Move the Clock to ``until`` (UTC) the way a reactor does, one call at a time."""
        run_until(self.clock, utc(until))

    def enqueued(self) -> dict[str, list[str]]:
        """Schedule -> the UTC instants of its enqueued runs, in order."""
        out: dict[str, list[str]] = {name: [] for name in CRONS}
        for run in self.store.enqueued():
            out.setdefault(run.schedule, []).append(iso(run.when))
        return out

    def assert_claimed_on_time(self) -> None:
        """Every job was claimed at exactly its run's instant on the Clock
        (not early, not late), and each (schedule, instant) only once."""
        for at, claims in self.store.claim_batches:
            for claim in claims:
                self.assertEqual(at, claim.when, f"{claim.schedule} claimed at {iso(at)}")
        keys = [(r.schedule, r.when) for r in self.store.enqueued()]
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(self.store.calls["claim"], len(self.store.claim_batches))


def _deferred(result: Deferred[None] | None) -> Deferred[None]:
    return result if isinstance(result, Deferred) else succeed(None)


class NewYorkTests(DstCase):
    """America/New_York: EDT (UTC-4) <-> EST (UTC-5)."""

    def test_fall_back_2025(self) -> None:
        """2025-11-02: at 06:00Z (02:00 EDT) clocks go back to 01:00 EST, so
        local 01:00-02:00 is lived twice (05:00-06:00Z, then 06:00-07:00Z).
        From 00:00 EDT through 03:00 EST: ``30 1`` fires at 01:30 EDT only
        (05:30Z, not 06:30Z); the hourly one fires at 01:00 EDT *and* 01:00 EST
        (05:00Z, 06:00Z), then 07:00Z and 08:00Z; ``*/30 2`` fires at 02:00 and
        02:30 EST (07:00Z, 07:30Z)."""
        self.start("America/New_York", "2025-11-02T04:00")
        self.run_through("2025-11-02T08:00")
        self.assertEqual(self.enqueued(), {
            FIXED: ["2025-11-02T05:30Z"],
            HOURLY: ["2025-11-02T05:00Z", "2025-11-02T06:00Z", "2025-11-02T07:00Z",
                     "2025-11-02T08:00Z"],
            HALF_TWO: ["2025-11-02T07:00Z", "2025-11-02T07:30Z"],
        })
        self.assert_claimed_on_time()
        # The next runs are planned on the far side of the change.
        self.assertEqual(self.store.member_of(FIXED), f"{FIXED}|{utc('2025-11-03T06:30')}")
        self.assertEqual(self.store.member_of(HALF_TWO), f"{HALF_TWO}|{utc('2025-11-03T07:00')}")

    def test_spring_forward_2025(self) -> None:
        """2025-03-09: at 07:00Z (02:00 EST) clocks jump to 03:00 EDT, so local
        02:00-03:00 does not exist.  From 01:00 EST through 06:00 EDT: ``30 1``
        fires at 01:30 EST (06:30Z); ``*/30 2`` (02:00 and 02:30, both in the
        gap) fires once, at 03:00 EDT (07:00Z); the hourly one's 02:00 and
        03:00 are the same instant (07:00Z), enqueued once, then 08:00Z to
        10:00Z."""
        self.start("America/New_York", "2025-03-09T06:00")
        self.run_through("2025-03-09T10:00")
        self.assertEqual(self.enqueued(), {
            FIXED: ["2025-03-09T06:30Z"],
            HOURLY: ["2025-03-09T07:00Z", "2025-03-09T08:00Z", "2025-03-09T09:00Z",
                     "2025-03-09T10:00Z"],
            HALF_TWO: ["2025-03-09T07:00Z"],
        })
        self.assert_claimed_on_time()
        # Back to ordinary days: 02:00 EDT the next day is 06:00Z.
        self.assertEqual(self.store.member_of(HALF_TWO), f"{HALF_TWO}|{utc('2025-03-10T06:00')}")
        self.assertEqual(self.store.member_of(FIXED), f"{FIXED}|{utc('2025-03-10T05:30')}")


class LondonTests(DstCase):
    """Europe/London: BST (UTC+1) <-> GMT (UTC+0)."""

    def test_fall_back_2025(self) -> None:
        """2025-10-26: at 01:00Z (02:00 BST) clocks go back to 01:00 GMT, so
        local 01:00-02:00 is lived twice (00:00-01:00Z, then 01:00-02:00Z).
        From 00:00 BST through 03:00 GMT: ``30 1`` fires at 01:30 BST only
        (00:30Z, not 01:30Z); the hourly one fires at 01:00 BST and 01:00 GMT
        (00:00Z, 01:00Z), then 02:00Z and 03:00Z; ``*/30 2`` at 02:00Z and 02:30Z."""
        self.start("Europe/London", "2025-10-25T23:00")
        self.run_through("2025-10-26T03:00")
        self.assertEqual(self.enqueued(), {
            FIXED: ["2025-10-26T00:30Z"],
            HOURLY: ["2025-10-26T00:00Z", "2025-10-26T01:00Z", "2025-10-26T02:00Z",
                     "2025-10-26T03:00Z"],
            HALF_TWO: ["2025-10-26T02:00Z", "2025-10-26T02:30Z"],
        })
        self.assert_claimed_on_time()
        self.assertEqual(self.store.member_of(FIXED), f"{FIXED}|{utc('2025-10-27T01:30')}")

    def test_spring_forward_2025(self) -> None:
        """2025-03-30: at 01:00Z (01:00 GMT) clocks jump to 02:00 BST, so local
        01:00-02:00 does not exist.  From 00:00 GMT through 05:00 BST: ``30 1``
        (in the gap) fires once at 02:00 BST (01:00Z); the hourly one's 01:00
        (in the gap) and 02:00 BST are both 01:00Z, enqueued once, then 02:00Z
        to 04:00Z; ``*/30 2`` fires at 02:00 and 02:30 BST (01:00Z, 01:30Z)."""
        self.start("Europe/London", "2025-03-30T00:00")
        self.run_through("2025-03-30T04:00")
        self.assertEqual(self.enqueued(), {
            FIXED: ["2025-03-30T01:00Z"],
            HOURLY: ["2025-03-30T01:00Z", "2025-03-30T02:00Z", "2025-03-30T03:00Z",
                     "2025-03-30T04:00Z"],
            HALF_TWO: ["2025-03-30T01:00Z", "2025-03-30T01:30Z"],
        })
        self.assert_claimed_on_time()
        self.assertEqual(self.store.member_of(FIXED), f"{FIXED}|{utc('2025-03-31T00:30')}")


class SteppingTests(DstCase):
    """The Clock is moved the way a reactor moves, not in one jump."""

    def test_no_run_before_its_instant_across_fall_back(self) -> None:
        """Stopping the Clock one second before each expected instant of the
        New York fall-back finds that run not yet enqueued, and at the instant
        it is: the timer never claims a second-pass run during the first pass
        (the ``*`` hour's 06:00Z run is not claimed at 05:00Z) and never claims
        ``30 1`` again at 06:30Z."""
        self.start("America/New_York", "2025-11-02T04:00")
        expected = [
            (utc("2025-11-02T05:00"), HOURLY), (utc("2025-11-02T05:30"), FIXED),
            (utc("2025-11-02T06:00"), HOURLY), (utc("2025-11-02T07:00"), HOURLY),
            (utc("2025-11-02T07:00"), HALF_TWO), (utc("2025-11-02T07:30"), HALF_TWO),
            (utc("2025-11-02T08:00"), HOURLY),
        ]
        for at in sorted({at for at, _ in expected}):
            before = {(r.schedule, r.when) for r in self.store.enqueued()}
            run_until(self.clock, at - 1)
            self.assertEqual({(r.schedule, r.when) for r in self.store.enqueued()}, before)
            run_until(self.clock, at)
            now = {(r.schedule, r.when) for r in self.store.enqueued()}
            self.assertEqual(now - before, {(s, w) for w, s in expected if w == at}, iso(at))
        run_until(self.clock, utc("2025-11-02T08:29"))
        self.assertEqual(len(self.store.enqueued()), len(expected))
        self.assert_claimed_on_time()
