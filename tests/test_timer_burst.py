"""The timer under many runs due at once: a pipeline of builds and claims, in
order, exactly once, with one log line per round instead of one per run."""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs

from btu_twisted.timing.timer import (
    BUILD_CHUNK,
    BUILD_WAIT,
    CLAIM_BATCH,
    CLAIMS_IN_FLIGHT,
    HOLD_SECS,
    LOOKAHEAD,
)
from tests.fakes import FakeStore
from tests.test_timer import T, TimerCase, mentioning, texts

N = 4 * BUILD_CHUNK  # a burst of four chunks


def names(count: int, prefix: str = "TS-") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


class PipelineTests(TimerCase):
    def test_first_chunks_claimed_while_the_last_is_still_building(self) -> None:
        """With the last chunk's builds held (a slow site), the first chunks
        are claimed at T all the same; the held ones follow as soon as they
        are built, and every run is enqueued exactly once."""
        burst = names(N)
        last_chunk = burst[-BUILD_CHUNK:]
        for name in burst:
            self.schedule(name, T)
        self.builder.held.update(last_chunk)
        self.timer.startService()
        self.advance_to(T)
        self.assertTrue(self.builder.pending)
        self.assertEqual(self.store.claim_batches[0][0], T)
        claimed = {c.schedule for _, batch in self.store.claim_batches for c in batch}
        self.assertEqual(claimed, set(burst[:-BUILD_CHUNK]))
        self.assertEqual(self.job_count(), N - BUILD_CHUNK)

        while self.builder.pending:
            self.builder.fire()
            self.settle()
        self.advance_to(T + 1)
        self.assertEqual(sorted(r.schedule for r in self.store.enqueued()), burst)
        self.assertEqual(self.timer.stats.enqueued, N)
        self.assertEqual(self.store.zset, {})

    def test_claims_of_the_first_slice_go_out_before_the_last_slice_is_built(self) -> None:
        """A burst whose rows come slowly (each chunk's read takes a second):
        the chunks due at T that are ready are claimed at T, before the last
        chunk's row read has even returned."""
        self.db.latency = 0.8
        burst = names(N)
        for name in burst:
            self.schedule(name, T)
        self.timer.startService()
        self.advance_to(T + 5)
        first_claim = self.store.claim_batches[0][0]
        last_build = max(b.at for b in self.builder.builds)
        self.assertEqual(first_claim, T)
        self.assertLess(first_claim, last_build)
        self.assertEqual(self.job_count(), N)
        self.assertEqual(len({r.schedule for r in self.store.enqueued()}), N)

    def test_several_claim_calls_in_flight_each_at_most_a_batch(self) -> None:
        """Redis gets the next claim calls before the first one's reply is
        read (never more than CLAIMS_IN_FLIGHT), each at most CLAIM_BATCH."""
        store = FakeStore(self.clock, latency=0.001)
        timer = self.make_timer(store=store)
        for name in names(N):
            self.db.put(self.row(name))
            store.add(name, T)
        timer.startService()
        self.advance_to(T + 1)
        self.assertEqual(store.max_in_flight["claim"], CLAIMS_IN_FLIGHT)
        self.assertEqual(max(len(b) for _, b in store.claim_batches), CLAIM_BATCH)
        self.assertEqual(len(store.enqueued()), N)

    def test_claimed_in_order_of_due_time_then_name(self) -> None:
        """Runs missed while the daemon was down, due at three different
        seconds, go on the queue earliest first, and by name within a second."""
        due = {}
        for k, when in enumerate((T - 3, T - 1, T - 2)):
            for name in reversed(names(400, prefix=f"S{k}-")):
                self.schedule(name, when)
                due[name] = when
        self.advance_to(T)
        self.timer.startService()
        self.settle()
        runs = [(r.when, r.schedule) for r in self.store.enqueued()]
        self.assertEqual(runs, sorted((when, name) for name, when in due.items()))
        self.assertEqual(self.store.queues["rq:queue:default"],
                         [r.job_id for r in self.store.enqueued()])

    def test_replans_wait_for_the_burst_to_be_claimed(self) -> None:
        """The schedules claimed first are not planned again while due jobs of
        the burst are still being built (the planner would compete with the
        claims); once the last are claimed, all are, in one go."""
        burst = names(N)
        for name in burst:
            self.schedule(name, T)
        self.builder.held.update(burst[-10:])
        self.timer.startService()
        self.advance_to(T + BUILD_WAIT)
        self.assertEqual(self.job_count(), N - 10)
        self.assertEqual(len(self.fifo), 0)
        self.builder.fire()
        self.settle()
        self.assertEqual(self.job_count(), N)
        self.assertEqual(sorted(self.fifo.take(2 * N)), burst)

    def test_replans_wait_no_longer_than_hold_secs(self) -> None:
        """A build that never finishes does not hold the others' replanning
        (an every-second schedule must be planned again in time)."""
        burst = names(N)
        for name in burst:
            self.schedule(name, T)
        self.builder.held.add(burst[-1])
        self.timer.startService()
        self.advance_to(T + HOLD_SECS)
        self.assertEqual(sorted(self.fifo.take(2 * N)), burst[:-1])
        self.builder.fire()
        self.advance_to(T + 1)
        self.assertEqual(self.fifo.take(5), [burst[-1]])
        self.assertEqual(self.job_count(), N)

    def test_a_burst_longer_than_hold_secs_replans_as_it_goes(self) -> None:
        """Claims that take longer than HOLD_SECS (Redis slow: 0.2 s a call)
        let go of the schedules claimed so far without waiting for the rest."""
        store = FakeStore(self.clock, latency=0.2)
        timer = self.make_timer(store=store)
        burst = names(4 * N)
        for name in burst:
            self.db.put(self.row(name))
            store.add(name, T)
        timer.startService()
        # The first replies come at T + 0.2; HOLD_SECS after those, the
        # schedules claimed by then are let go while the rest are claimed.
        self.advance_to(T + 0.2 + HOLD_SECS + 0.3)
        self.assertLess(len(store.enqueued()), 4 * N)
        self.assertGreater(len(self.fifo), 0)
        self.advance_to(T + 5)
        self.assertEqual(len(store.enqueued()), 4 * N)
        self.assertEqual(sorted(self.fifo.take(8 * N)), burst)

    def row(self, name: str):  # type: ignore[no-untyped-def]
        from tests.test_timer import row_of

        return row_of(name)


class BurstLogTests(TimerCase):
    def test_late_burst_is_one_warning_line(self) -> None:
        """1,000 runs missed while the daemon was down and enqueued at start
        make one warning line with the count, how late and a few names — not
        a line per run."""
        burst = names(1000)
        for name in burst:
            self.schedule(name, T - 100)
        self.advance_to(T)
        with capturedLogs() as events:
            self.timer.startService()
            self.settle()
        self.assertEqual(self.job_count(), 1000)
        warnings = texts(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("1,000 runs of 1,000 schedules enqueued up to 100.0 s late", warnings[0])
        self.assertIn("TS-00000, TS-00001, TS-00002 and 997 more", warnings[0])
        self.assertLessEqual(len(mentioning(events, "TS-00")), 1, texts(events))

    def test_a_few_late_runs_are_one_line_naming_each(self) -> None:
        """Four runs enqueued late in one round: one warning naming all four."""
        for name in names(4):
            self.schedule(name, T - 10)
        self.advance_to(T)
        with capturedLogs() as events:
            self.timer.startService()
            self.settle()
        warnings = texts(events, LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("4 runs of 4 schedules enqueued up to 10.0 s late", warnings[0])
        self.assertIn("TS-00000, TS-00001, TS-00002, TS-00003)", warnings[0])

    def test_on_time_burst_is_one_info_line(self) -> None:
        """A burst enqueued on time says so in one info line."""
        for name in names(N):
            self.schedule(name, T)
        self.timer.startService()
        self.advance_to(T - LOOKAHEAD - 0.5)
        with capturedLogs() as events:
            self.advance_to(T + 1)
        self.assertEqual(self.job_count(), N)
        lines = mentioning(events, "TS-")
        self.assertEqual(len(lines), 1, texts(events))
        self.assertIn(f"enqueued {N:,} runs of {N:,} schedules", lines[0])
        self.assertEqual(texts(events, LogLevel.warn), [])

    def test_a_few_runs_get_a_line_each(self) -> None:
        """Three runs due together get their own lines, as before."""
        for name in names(3):
            self.schedule(name, T)
        self.timer.startService()
        with capturedLogs() as events:
            self.advance_to(T + 1)
        for name in names(3):
            self.assertEqual(len(mentioning(events, "enqueued", name)), 1, texts(events))


class MisfireBurstTests(TimerCase):
    grace = 60.0

    def test_many_misfires_are_one_line(self) -> None:
        """300 runs missed by more than misfire_grace_secs are skipped with one
        warning line for all of them; a run within grace still fires."""
        burst = names(300)
        for name in burst:
            self.schedule(name, T - 100)
        self.schedule("RECENT", T - 30)
        self.advance_to(T)
        with capturedLogs() as events:
            self.timer.startService()
            self.settle()
        self.assertEqual([r.schedule for r in self.store.enqueued()], ["RECENT"])
        self.assertEqual(self.timer.stats.skipped, 300)
        skipped = mentioning(events, "skipped", "misfire_grace_secs")
        self.assertEqual(len(skipped), 1, texts(events))
        self.assertIn("300 runs of 300 schedules skipped: missed by up to 100 s", skipped[0])
