"""The timer's side of overlap control and run history, on a Clock and the fake store.

The claim script's own behaviour is tested against the real Redis in
tests/integration/test_store.py; here: which claims the timer marks for the
overlap check, and which outcome it gives the runs it settles without a job.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.logger import capturedLogs

from btu_twisted.store.history import (
    DROPPED,
    ENQUEUED,
    SKIPPED_MISFIRE,
    SKIPPED_OVERLAP,
    SKIPPED_UNBUILDABLE,
    parse_run,
)
from tests.test_timer import T, TimerCase, mentioning, row_of, texts


class OverlapTests(TimerCase):
    def outcomes(self, name: str) -> list[str]:
        return [parse_run(r).outcome for r in self.store.run_history.get(name, [])]  # type: ignore[union-attr]

    def test_mariadb_rows_follow_the_overlap_config_key(self) -> None:
        """With ``overlap = "skip"`` in the config, a BTU schedule's run is held
        back while its previous job is still queued, and goes again once the
        job has finished; the held-back runs are recorded, counted and logged
        once."""
        self.timer = self.make_timer(default_overlap="skip")
        self.schedule("TS-1", T)
        self.timer.startService()
        self.advance_to(T)
        [first] = self.store.enqueued("TS-1")
        for when in (T + 1, T + 2):
            self.store.add("TS-1", when)
            self.timer.planned(when)
            self.advance_to(when)
        self.assertEqual(self.job_count("TS-1"), 1)
        self.assertEqual(self.outcomes("TS-1"), [SKIPPED_OVERLAP, SKIPPED_OVERLAP, ENQUEUED])
        self.assertEqual(self.timer.stats.skipped, 2)
        self.store.jobs[first.job_id]["status"] = "finished"
        self.store.add("TS-1", T + 3)
        self.timer.planned(T + 3)
        self.advance_to(T + 3)
        self.assertEqual(self.job_count("TS-1"), 2)
        self.assertEqual(self.outcomes("TS-1")[0], ENQUEUED)

    def test_allow_is_the_default_and_file_rows_say_their_own(self) -> None:
        """Without the config key a BTU schedule is never held back; a file
        row's own ``overlap`` wins over the key in both directions."""
        self.db.put(replace(row_of("FILE-SKIP"), source="file", overlap="skip"))
        self.db.put(replace(row_of("FILE-ALLOW"), source="file", overlap="allow"))
        self.db.put(row_of("TS-1"))
        for name in ("FILE-SKIP", "FILE-ALLOW", "TS-1"):
            self.store.add(name, T)
        self.timer.startService()
        self.advance_to(T)
        for name in ("FILE-SKIP", "FILE-ALLOW", "TS-1"):
            self.store.add(name, T + 1)
        self.timer.planned(T + 1)
        self.advance_to(T + 1)
        self.assertEqual(
            {name: self.job_count(name) for name in ("FILE-SKIP", "FILE-ALLOW", "TS-1")},
            {"FILE-SKIP": 1, "FILE-ALLOW": 2, "TS-1": 2},
        )

    def test_forgotten_schedule_leaves_no_held_back_stretch(self) -> None:
        """A schedule the planner unplans (deleted or disabled) while its runs
        are held back is forgotten: nothing of it is kept, and enabled again
        while its old job still waits, its first held-back run is logged as
        the start of a new stretch."""
        self.timer = self.make_timer(default_overlap="skip")
        self.schedule("TS-1", T)
        self.timer.startService()
        self.advance_to(T)
        with capturedLogs() as events:
            self.store.add("TS-1", T + 1)
            self.timer.planned(T + 1)
            self.advance_to(T + 1)
        self.assertEqual(len(mentioning(events, "TS-1", "further skips not logged")), 1)

        self.timer.forget(["TS-1"])  # what the planner does with unplanned schedules
        self.assertEqual(self.timer._overlapping, set())
        with capturedLogs() as events:
            self.store.add("TS-1", T + 2)
            self.timer.planned(T + 2)
            self.advance_to(T + 2)
        self.assertEqual(self.outcomes("TS-1")[0], SKIPPED_OVERLAP)
        self.assertEqual(
            len(mentioning(events, "TS-1", "further skips not logged")), 1, texts(events))


class OutcomeTests(TimerCase):
    grace = 5.0

    def outcome_of(self, name: str) -> tuple[int, str, str | None]:
        [run] = [parse_run(r) for r in self.store.run_history[name]]
        return run.scheduled, run.outcome, run.job_id  # type: ignore[union-attr]

    def test_jobless_runs_are_recorded_with_why(self) -> None:
        """A run the committed row no longer produces is dropped, one too late
        for misfire_grace_secs skipped_misfire, one whose job cannot be built
        skipped_unbuildable; an enqueued one carries its job id."""
        self.schedule("GONE", T, row_of("GONE", enabled=False))
        self.schedule("BAD", T, row_of("BAD", arguments="[1, 2]"))
        self.schedule("OK", T)
        self.store.add("LATE", T - 60)
        self.db.put(row_of("LATE"))
        self.timer.startService()
        self.advance_to(T)
        self.assertEqual(self.outcome_of("GONE"), (T, DROPPED, None))
        self.assertEqual(self.outcome_of("BAD"), (T, SKIPPED_UNBUILDABLE, None))
        self.assertEqual(self.outcome_of("LATE"), (T - 60, SKIPPED_MISFIRE, None))
        [job] = self.store.enqueued("OK")
        self.assertEqual(self.outcome_of("OK"), (T, ENQUEUED, job.job_id))

    def test_history_length_zero_keeps_none(self) -> None:
        self.store.history_length = 0
        self.schedule("OK", T)
        self.timer.startService()
        self.advance_to(T)
        self.assertEqual(self.job_count("OK"), 1)
        self.assertEqual(self.store.run_history, {})


    def test_history_is_filed_at_start_and_after_each_round(self) -> None:
        """The store files its history inbox when the timer starts (what a
        stopped daemon left) and once each round of claims has let go of what
        it set off, not between the round's claim calls."""
        self.schedule("A", T)
        self.schedule("B", T + 5)
        self.timer.startService()
        self.assertEqual(self.store.folds, 1)
        self.advance_to(T)
        self.assertEqual(self.job_count("A"), 1)
        self.assertEqual(self.store.folds, 2)
        self.advance_to(T + 5)
        self.assertEqual(self.job_count("B"), 1)
        self.assertEqual(self.store.folds, 3)
