"""Schedule health: the states (store/health_record.py) and the job follower
(timing/job_follower.py) on a task.Clock with an in-memory store."""

from __future__ import annotations

import base64
import zlib
from collections.abc import Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from btu_twisted.store.claims import Claim
from btu_twisted.store.health_record import (
    CRITICAL,
    FAILING,
    LATE,
    MISSED,
    NEVER_RUN,
    OK,
    PAUSED,
    STUCK,
    WARNING,
    Health,
    HealthRecord,
    PendingJob,
    Thresholds,
    classify,
    decode,
    encode,
    error_line,
)
from btu_twisted.store.health_store import JobState, job_state
from btu_twisted.timing.coalesced import CoalescedRuns
from btu_twisted.timing.job_follower import JobFollower

T = Thresholds(failing_warning=1, failing_critical=3, late_secs=60, stuck_grace_secs=30)


class StateTests(SynchronousTestCase):
    def test_never_run_and_paused_do_not_alarm(self) -> None:
        self.assertEqual(classify(None, 0, T), Health(NEVER_RUN, 0, "no run enqueued yet"))
        failing = HealthRecord(last_enqueued=1, consecutive_failures=9)
        self.assertEqual(classify(failing, 10, T, paused=True).state, PAUSED)
        self.assertEqual(classify(failing, 10, T, paused=True).level, 0)

    def test_failing_warns_at_one_and_is_critical_from_three(self) -> None:
        levels = [classify(HealthRecord(last_enqueued=1, consecutive_failures=n), 10, T)
                  for n in range(4)]
        self.assertEqual([(h.state, h.level) for h in levels], [
            (OK, 0), (FAILING, WARNING), (FAILING, WARNING), (FAILING, CRITICAL)])
        custom = Thresholds(failing_warning=2, failing_critical=5)
        self.assertEqual(classify(HealthRecord(last_enqueued=1, consecutive_failures=1), 10,
                                  custom).state, OK)

    def test_stuck_past_timeout_and_grace(self) -> None:
        record = HealthRecord(last_enqueued=100, job=PendingJob("j", 100, 100, 101, 10))
        self.assertEqual(classify(record, 101 + 40, T).state, OK)
        stuck = classify(record, 101 + 41, T)
        self.assertEqual((stuck.state, stuck.level), (STUCK, CRITICAL))
        # No timeout in the hash: rq's default of 180 s.
        untimed = replace_job(record, timeout=None)
        self.assertEqual(classify(untimed, 101 + 200, T).state, OK)
        self.assertEqual(classify(untimed, 101 + 211, T).state, STUCK)
        # rq's -1: no timeout at all, so never stuck.
        endless = replace_job(record, timeout=-1)
        self.assertEqual(classify(endless, 101 + 86_400, T).state, OK)

    def test_rq_times_are_utc_with_or_without_a_zone(self) -> None:
        from btu_twisted.store.health_store import parse_time

        for text in ("2026-12-07T15:00:00.5Z", "2026-12-07T15:00:00.5",
                     b"2026-12-07T15:00:00.500000+00:00"):
            self.assertEqual(parse_time(text), 1796655600.5)
        self.assertIsNone(parse_time("yesterday"))

    def test_late_while_queued_or_after_a_long_wait(self) -> None:
        queued = HealthRecord(last_enqueued=100, job=PendingJob("j", 100, 100))
        self.assertEqual(classify(queued, 160, T).state, OK)
        self.assertEqual((classify(queued, 161, T).state, classify(queued, 161, T).level),
                         (LATE, WARNING))
        waited = HealthRecord(last_enqueued=100, last_success=200, queue_secs=90)
        self.assertEqual(classify(waited, 300, T).state, LATE)

    def test_missed_until_the_next_success(self) -> None:
        record = HealthRecord(last_enqueued=1).with_missed([5, 6])
        self.assertEqual((classify(record, 10, T).state, record.missed), (MISSED, 2))
        self.assertEqual(record.missed_times, (5, 6))
        many = record.with_missed(list(range(100, 120)))
        self.assertEqual((many.missed, len(many.missed_times)), (22, 10))

    def test_record_round_trip_and_bad_text(self) -> None:
        record = HealthRecord(last_enqueued=1.5, last_error="ValueError: x", missed=1,
                              missed_times=(3,), job=PendingJob("j", 1, 1.5))
        self.assertEqual(decode(encode(record)), record)
        self.assertEqual(decode(encode(HealthRecord())), HealthRecord())
        self.assertIsNone(decode("not json"))
        self.assertIsNone(decode("[1]"))
        self.assertIsNone(decode('{"consecutive_failures": "x", "job": {"nope": 1}}'))

    def test_error_line_is_the_exception_line(self) -> None:
        trace = 'Traceback (most recent call last):\n  File "x", line 1\nValueError: boom\n\n'
        self.assertEqual(error_line(trace), "ValueError: boom")
        self.assertEqual(error_line(""), "")

    def test_job_state_reads_both_error_forms(self) -> None:
        trace = b"Traceback ...\nRuntimeError: from the stream"
        stream = "s:" + base64.b64encode(zlib.compress(trace)).decode()
        state = job_state(["failed", "2026-12-07T10:00:00.5Z", "2026-12-07T10:00:01Z",
                           "2026-12-07T10:00:02.000001Z", "5", stream])
        self.assertEqual(state.error, "RuntimeError: from the stream")
        self.assertEqual(state.timeout, 5.0)
        self.assertAlmostEqual(state.started - state.enqueued, 0.5)  # type: ignore[operator]
        hashed = job_state(["failed", "", "", "", "", b"h:" + zlib.compress(b"KeyError: k")])
        self.assertEqual(hashed.error, "KeyError: k")
        self.assertEqual(job_state(["", "", "", "", "x", ""]).status, "")


def replace_job(record: HealthRecord, **changes: object) -> HealthRecord:
    from dataclasses import replace

    assert record.job is not None
    return replace(record, job=replace(record.job, **changes))  # type: ignore[arg-type]


class FakeHealthStore:
    """Jobs as rq would leave them, and the records saved."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobState] = {}
        self.saved: dict[str, HealthRecord] = {}
        self.asked: list[list[str]] = []
        self.fail_next = False

    async def follow(self, jobs: Sequence[tuple[str, str]]) -> list[JobState | None]:
        self.asked.append([job_id for job_id, _ in jobs])
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("Redis away")
        gone = JobState("", None, None, None, None, None)
        found = [self.jobs.get(job_id, gone) for job_id, _ in jobs]
        # As the script does: nothing for a job whose status is the one last seen.
        return [None if state.status == seen else state
                for state, (_, seen) in zip(found, jobs, strict=True)]

    async def save(self, records: Mapping[str, HealthRecord]) -> None:
        self.saved.update(records)

    async def load(self) -> dict[str, HealthRecord]:
        return dict(self.saved)

    async def forget(self, names: Sequence[str]) -> None:
        for name in names:
            self.saved.pop(name, None)


def claim(name: str, when: int, job_id: str) -> Claim:
    return Claim(member=f"{name}|{when}", schedule=name, when=when, job_id=job_id)


class FollowerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = FakeHealthStore()
        self.paused: set[str] = set()
        self.follower = JobFollower(self.clock, self.store, T, interval=3,
                                    paused=lambda: self.paused, pass_limit=2)
        self.changes: list[tuple[str, str, str]] = []
        self.follower.listeners.append(
            lambda name, old, new, record: self.changes.append((name, old.state, new.state)))
        started = self.follower.start()
        self.assertIsNone(self.successResultOf(started))

    def tearDown(self) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.follower.stop()))

    def job(self, job_id: str, status: str, error: str | None = None,
            started: float | None = None, ended: float | None = None) -> None:
        self.store.jobs[job_id] = JobState(status, None, started, ended, 10.0, error)

    def test_failures_then_recovery(self) -> None:
        for n in range(3):
            self.follower.enqueued(claim("bad", 1000 + n, f"b{n}"), 0.0)
            self.job(f"b{n}", "failed", "ValueError: boom", 1001, 1002)
            self.clock.advance(3)
        state = self.follower.states["bad"]
        self.assertEqual((state.state, state.level), (FAILING, CRITICAL))
        record = self.store.saved["bad"]
        self.assertEqual((record.consecutive_failures, record.last_error),
                         (3, "ValueError: boom"))
        self.assertEqual(self.changes, [("bad", NEVER_RUN, FAILING), ("bad", FAILING, FAILING)])
        self.follower.enqueued(claim("bad", 2000, "good"), 0.0)
        self.job("good", "finished", started=2001, ended=2003)
        self.clock.advance(3)
        self.assertEqual(self.follower.states["bad"].state, OK)
        self.assertEqual(self.store.saved["bad"].consecutive_failures, 0)
        self.assertEqual(self.store.saved["bad"].run_secs, 2)
        self.assertIsNone(self.store.saved["bad"].job)

    def test_an_idle_follower_makes_no_pass(self) -> None:
        """Nothing out and nothing to save: no pass at all (500 idle sites made 167
        passes a second, each a coroutine and a Deferred); a job out restarts them."""
        passes: list[float] = []
        follow_once = self.follower.follow_once

        async def counted() -> None:
            passes.append(self.clock.seconds())
            await follow_once()

        self.follower.follow_once = counted  # type: ignore[method-assign]
        self.clock.advance(30)
        self.assertEqual((passes, self.store.asked), ([], []))
        # Not even a timer: each idle site's wake-ups added up to 167 a second.
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.follower.enqueued(claim("s", 1030, "j1"), 0.0)
        self.job("j1", "started", started=1031)
        self.clock.advance(3)
        self.assertEqual(len(passes), 1)
        self.assertEqual(self.store.asked, [["j1"]])
        self.job("j1", "finished", started=1031, ended=1032)
        self.clock.advance(3)
        self.assertEqual(len(passes), 2)
        self.assertEqual(self.store.saved["s"].run_secs, 1)
        # Followed to its end and saved: the timer goes again, until the next run.
        self.clock.advance(3)
        self.assertEqual((len(passes), self.clock.getDelayedCalls()), (2, []))
        self.follower.skipped("s", [1040])
        self.clock.advance(3)
        self.assertEqual(len(passes), 3)
        self.assertEqual(self.store.saved["s"].missed, 1)

    def test_only_unfinished_jobs_are_asked_a_bounded_number_per_pass(self) -> None:
        for n in range(5):
            self.follower.enqueued(claim(f"s{n}", 1000, f"j{n}"), 0.0)
            self.job(f"j{n}", "queued")
        self.clock.advance(3)
        self.clock.advance(3)
        self.clock.advance(3)
        # Two a pass, the longest unasked first.
        self.assertEqual(self.store.asked, [["j0", "j1"], ["j2", "j3"], ["j4", "j0"]])
        self.job("j1", "finished", started=1001, ended=1001)
        self.clock.advance(3)
        self.clock.advance(3)
        self.assertNotIn("j1", sum(self.store.asked[4:], []))

    def test_stuck_job_is_critical_and_a_failed_pass_is_retried(self) -> None:
        self.follower.enqueued(claim("slow", 1000, "s"), 0.0)
        self.job("s", "started", started=1001)
        self.clock.advance(3)
        self.assertEqual(self.follower.states["slow"].state, OK)
        self.assertEqual(self.store.saved["slow"].last_started, 1001)
        self.store.fail_next = True
        self.clock.advance(3)
        for _ in range(15):
            self.clock.advance(3)
        self.assertEqual(self.follower.states["slow"].state, STUCK)
        self.assertEqual(self.follower.unwell()[0][0], "slow")

    def test_skips_are_missed_until_success_and_paused_is_quiet(self) -> None:
        self.follower.enqueued(claim("m", 1000, "m1"), 0.0)
        self.job("m1", "queued")
        self.follower.skipped("m", [1001, 1002])
        self.clock.advance(3)
        self.assertEqual(self.follower.states["m"].state, MISSED)
        self.paused.add("m")
        self.follower.skipped("m", [1003])
        self.clock.advance(3)
        self.assertEqual(self.follower.states["m"].state, PAUSED)
        self.assertEqual(self.follower.unwell(), [])

    def test_a_restart_carries_on_from_the_saved_records(self) -> None:
        self.follower.enqueued(claim("r", 1000, "r1"), 0.0)
        self.job("r1", "queued")
        self.clock.advance(3)
        self.successResultOf(Deferred.fromCoroutine(self.follower.stop()))
        again = JobFollower(self.clock, self.store, T, interval=3)
        self.successResultOf(again.start())
        self.job("r1", "failed", "OSError: disk", 1001, 1002)
        self.clock.advance(3)
        self.assertEqual(again.records["r"].last_error, "OSError: disk")
        self.successResultOf(Deferred.fromCoroutine(again.stop()))

    def test_a_vanished_job_counts_as_done(self) -> None:
        self.follower.enqueued(claim("v", 1000, "v1"), 0.0)
        self.clock.advance(3)
        self.assertIsNotNone(self.follower.records["v"].last_success)
        self.assertEqual(self.follower.states["v"].state, OK)


class CoalescedTests(SynchronousTestCase):
    def test_times_a_late_run_covered(self) -> None:
        from tests.fakes import FakeDatabase, make_row

        clock = Clock()
        db = FakeDatabase(clock)
        db.put(make_row("minutely", "* * * * *"), make_row("bad", "not a cron"))
        runs = CoalescedRuns(db, "UTC")
        got = self.successResultOf(Deferred.fromCoroutine(runs(
            {"minutely": (600, 600 + 185.5), "bad": (600, 900), "gone": (600, 900)})))
        self.assertEqual(got, {"minutely": [660, 720, 780]})

    def test_the_follower_counts_them_as_missed(self) -> None:
        clock = Clock()
        clock.advance(1000)
        store = FakeHealthStore()
        asked: list[dict[str, tuple[int, float]]] = []

        async def covered(late: Mapping[str, tuple[int, float]]) -> dict[str, list[int]]:
            asked.append(dict(late))
            return {name: [when + 60] for name, (when, _) in late.items()}

        follower = JobFollower(clock, store, T, interval=3, coalesced=covered)
        self.successResultOf(follower.start())
        store.jobs["j1"] = store.jobs["j2"] = JobState("queued", None, None, None, 10, None)
        follower.enqueued(claim("on-time", 1000, "j1"), 0.2)
        follower.enqueued(claim("late", 880, "j2"), 120.0)
        clock.advance(3)
        self.assertEqual(asked, [{"late": (880, 1000.0)}])
        self.assertEqual(follower.records["late"].missed_times, (940,))
        self.assertEqual(follower.states["late"].state, MISSED)
        self.assertEqual(follower.states["on-time"].state, OK)
        self.successResultOf(Deferred.fromCoroutine(follower.stop()))


class UnplannedTests(SynchronousTestCase):
    def test_deleted_goes_disabled_stops_alarming_a_new_run_clears_it(self) -> None:
        clock = Clock()
        clock.advance(1000)
        store = FakeHealthStore()
        why = {"off": "the schedule is disabled", "broken-cron": None}

        async def inactive(names: Sequence[str]) -> dict[str, str | None]:
            return {name: why.get(name) for name in names if name != "broken-cron"}

        follower = JobFollower(clock, store, T, interval=3, inactive=inactive)
        self.successResultOf(follower.start())
        for name in ("gone", "off", "broken-cron"):
            follower.enqueued(claim(name, 1000, f"{name}-1"), 0.0)
            store.jobs[f"{name}-1"] = JobState("failed", None, 1001, 1002, 10, "E: x")
        store.jobs["gone-2"] = JobState("queued", None, None, None, 10, None)
        follower.enqueued(claim("gone", 1001, "gone-2"), 0.0)
        clock.advance(3)
        self.assertEqual(follower.states["gone"].state, FAILING)
        follower.unplanned(["gone", "off", "broken-cron", "never-seen"])
        clock.advance(3)
        self.assertNotIn("gone", store.saved)
        self.assertNotIn("gone", follower.states)
        self.assertEqual(follower.states["off"], Health("inactive", 0, "the schedule is disabled"))
        self.assertEqual(follower.states["broken-cron"].state, FAILING)
        store.jobs["gone-2"] = JobState("finished", None, 1005, 1006, 10, None)
        clock.advance(3)
        self.assertNotIn("gone", follower.records)  # its last job is no longer followed
        follower.enqueued(claim("off", 2000, "off-2"), 0.0)
        store.jobs["off-2"] = JobState("queued", None, None, None, 10, None)
        clock.advance(3)
        self.assertIsNone(follower.records["off"].inactive)
        self.assertEqual(follower.states["off"].state, FAILING)
        self.successResultOf(Deferred.fromCoroutine(follower.stop()))


class SlowLoadTests(SynchronousTestCase):
    def test_runs_reported_while_loading_are_applied_after(self) -> None:
        """Reading 100,000 records must not hold the timer: the start returns at
        once, and what the timer reports meanwhile lands on the loaded records."""
        clock = Clock()
        store = FakeHealthStore()
        store.saved["s"] = HealthRecord(last_enqueued=1, consecutive_failures=2)
        loaded: Deferred[None] = Deferred()
        real_load = store.load

        async def slow_load() -> dict[str, HealthRecord]:
            await loaded
            return await real_load()

        store.load = slow_load  # type: ignore[method-assign]
        follower = JobFollower(clock, store, T, interval=3)
        starting = follower.start()
        self.assertNoResult(starting)
        follower.enqueued(claim("s", 100, "j"), 0.0)
        follower.skipped("s", [99])
        self.assertEqual(follower.records, {})
        loaded.callback(None)
        self.successResultOf(starting)
        record = follower.records["s"]
        self.assertEqual((record.consecutive_failures, record.missed, record.job.job_id),  # type: ignore[union-attr]
                         (2, 1, "j"))
        self.successResultOf(Deferred.fromCoroutine(follower.stop()))


class ConfigTests(SynchronousTestCase):
    def test_thresholds_in_order(self) -> None:
        from btu_twisted.config import ConfigError, parse_config
        from btu_twisted.store.health_record import thresholds_of

        base = {"full_refresh_internal_secs": 60, "scheduler_polling_interval": 5,
                "time_zone_string": "UTC", "rq_host": "h", "rq_port": 6379, "socket_path": "/s",
                "schedules_file": __file__}
        config, _ = parse_config({**base, "health_failing_critical": 5, "health_late_secs": 9})
        self.assertEqual(thresholds_of(config), Thresholds(1, 5, 9.0, 20.0))
        error = self.assertRaises(ConfigError, parse_config, {**base, "health_failing_warning": 4})
        self.assertEqual(error.problems, [
            "health_failing_critical: 3 is below health_failing_warning (4): a schedule would "
            "be critical before it is a warning"])
