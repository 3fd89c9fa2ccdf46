"""The change feed and the job-id write-back, driven by a Clock over fakes."""

from __future__ import annotations

from datetime import datetime, timedelta

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from btu_twisted.sources.change_feed import ChangeFeed, interval_for
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.sources.job_ids import JobIdRecorder
from btu_twisted.sources.mariadb import RowsLocked
from btu_twisted.sources.table_times import Look
from tests.fakes import EPOCH, FakeDatabase, make_row, run_until

T0 = datetime(2027, 1, 15, 8, 0, 0)


class ChangeFeedCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.db = FakeDatabase(self.clock)
        self.fifo = ScheduleFifo()
        self.zone_changes = 0
        self.feed = ChangeFeed(
            self.clock, self.db, self.fifo, on_zone_changed=self.zone_changed,  # type: ignore[arg-type]
            interval=2.0, overlap=timedelta(seconds=120), follow_ups=(1.5, 4.0), stagger=2.0,
        )
        self.addCleanup(self.stop)

    def zone_changed(self) -> None:
        self.zone_changes += 1

    def stop(self) -> None:
        """Every test ends with the feed stopped and no delayed call left."""
        if self.feed.running:
            self.feed.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def look(self, seconds: float = 2.0) -> list[str]:
        run_until(self.clock, self.clock.seconds() + seconds)
        return self.fifo.take(1000)


class FeedTests(ChangeFeedCase):
    def test_edit_after_start_is_queued_once(self) -> None:
        """A row whose modified moves is queued at the next look, and not
        again at later looks while it stays the same."""
        self.db.modified["TS-OLD"] = T0 - timedelta(days=3)
        self.feed.startService()
        # The first look takes the latest edits too (one more planning at
        # start is harmless; an edit between the refresh's read and this look
        # is not missed).
        self.assertEqual(self.fifo.take(10), ["TS-OLD"])
        self.db.modified["TS-1"] = T0
        self.assertEqual(self.look(), ["TS-1"])
        self.assertEqual(self.look(), [])
        self.db.modified["TS-1"] = T0 + timedelta(seconds=1)
        self.assertEqual(self.look(), ["TS-1"])

    def test_late_commit_with_older_modified_is_not_missed(self) -> None:
        """Frappe writes modified at save, not at commit: a row that appears
        with a modified older than rows already seen is still queued."""
        self.db.modified["TS-A"] = T0
        self.feed.startService()
        self.fifo.take(10)
        self.db.modified["TS-B"] = T0 + timedelta(seconds=10)
        self.assertEqual(self.look(), ["TS-B"])
        self.db.modified["TS-LATE"] = T0 + timedelta(seconds=5)  # saved earlier, committed now
        self.assertEqual(self.look(), ["TS-LATE"])

    def test_task_edit_queues_its_schedules(self) -> None:
        """A task row edit (e.g. cancelled) queues the schedules that use it."""
        self.feed.startService()
        self.db.task_modified["TS-1"] = T0
        self.db.task_modified["TS-2"] = T0
        self.assertEqual(sorted(self.look()), ["TS-1", "TS-2"])

    def test_zone_change_calls_back_once(self) -> None:
        """A changed cron_time_zone asks for a full re-plan once per change."""
        self.db.zone = "UTC"
        self.feed.startService()
        self.look()
        self.assertEqual(self.zone_changes, 0)
        self.db.zone = "Asia/Kolkata"
        self.look()
        self.look()
        self.assertEqual(self.zone_changes, 1)

    def test_seen_pairs_are_forgotten_past_the_overlap(self) -> None:
        """What the feed remembers stays bounded by the overlap window."""
        self.feed.startService()
        for i in range(100):
            self.db.modified[f"TS-{i}"] = T0 + timedelta(seconds=i)
        self.look()
        self.db.modified["TS-NEW"] = T0 + timedelta(seconds=1000)
        self.look()
        self.assertEqual(len(self.feed._seen), 1)

    def test_database_down_logged_once_then_heals(self) -> None:
        """MariaDB away: no traceback per look (the Dependency logs the
        outage once); the edits made meanwhile are queued after it returns."""
        self.feed.startService()
        self.db.down = True
        with capturedLogs() as events:
            self.db.modified["TS-1"] = T0
            self.look(10.0)
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.critical], [])
        self.assertEqual(len([e for e in events if "log_failure" in e]), 0)
        self.db.down = False
        self.assertEqual(self.look(), ["TS-1"])


class TableTimesTests(ChangeFeedCase):
    """The change queries run only when a look sees the site's tables written."""

    def setUp(self) -> None:
        super().setUp()
        self.names_changes = 0
        self.feed = ChangeFeed(
            self.clock, self.db, self.fifo, on_zone_changed=self.zone_changed,  # type: ignore[arg-type]
            interval=15.0, overlap=timedelta(seconds=120), follow_ups=(1.5, 4.0), stagger=7.0,
            on_names_changed=self.names_changed, fallback=40.0,
        )
        self.db.put(make_row("TS-1"), make_row("TS-2"))
        self.db.modified.update({"TS-1": T0, "TS-2": T0})

    def names_changed(self) -> None:
        self.names_changes += 1

    def test_an_idle_site_costs_one_cheap_statement_a_look(self) -> None:
        """Ten idle minutes: one look every 15 s, the change queries only at the first."""
        self.feed.startService()
        run_until(self.clock, self.clock.seconds() + 600)
        self.assertEqual(self.db.calls["changes"], 1)
        self.assertEqual(self.db.calls["table_times"], self.feed.looks)
        self.assertEqual(self.feed.looks, 1 + 40)  # at 0, then 7, 22, ... 592
        self.assertEqual(self.names_changes, 0)

    def test_looks_of_a_site_start_at_its_stagger(self) -> None:
        self.feed.startService()
        run_until(self.clock, self.clock.seconds() + 6.9)
        self.assertEqual(self.feed.looks, 1)
        run_until(self.clock, self.clock.seconds() + 0.1)
        self.assertEqual(self.feed.looks, 2)

    def test_an_sql_edit_is_queued_at_the_next_look(self) -> None:
        self.feed.startService()
        self.fifo.take(10)
        self.db.modified["TS-2"] = T0 + timedelta(seconds=5)
        self.assertEqual(self.look(7.0), ["TS-2"])
        self.assertEqual(self.db.calls["changes"], 2)

    def test_a_delete_by_sql_starts_a_full_refresh(self) -> None:
        """No ``modified`` moves on a DELETE; the name set's digest does, and the full
        refresh (called back here) unplans what is gone."""
        self.feed.startService()
        self.fifo.take(10)
        self.db.delete("TS-1")
        self.look(7.0)
        self.assertEqual(self.names_changes, 1)
        self.look(15.0)
        self.assertEqual(self.names_changes, 1)

    def test_our_own_job_id_writes_read_no_rows(self) -> None:
        """Our redis_job_id writes move the table's time but not its digest."""
        self.feed.startService()
        self.db.write_job_ids({"TS-1": "job-1"})
        self.look(7.0)
        self.assertEqual(self.db.calls["changes"], 1)
        self.assertEqual(self.names_changes, 0)

    def test_a_time_of_this_second_is_checked_again_at_the_next_look(self) -> None:
        """UPDATE_TIME counts whole seconds: a write later in the second a look saw
        does not move it, so the next look reads the digest anyway."""
        frozen: list[object] = []
        recent = [True]
        real = self.db.table_times

        def same_second(previous: object, digest_anyway: bool) -> object:
            """The fake's digest, under a time that moves only when the test says."""

            def freeze(look: Look) -> Look:
                if not frozen:
                    frozen.append(look.times)
                times = frozen[0]
                read = digest_anyway or previous != times
                return Look(times, look.digest if read else None, recent[0])  # type: ignore[arg-type]
            return real(None, True).addCallback(freeze)

        self.db.table_times = same_second  # type: ignore[assignment, method-assign]
        self.feed.startService()
        self.fifo.take(10)
        self.db.modified["TS-2"] = T0 + timedelta(seconds=1)  # same second: time unchanged
        recent[0] = False
        self.assertEqual(self.look(7.0), ["TS-2"])
        self.db.modified["TS-1"] = T0 + timedelta(seconds=2)  # not recent any more: unseen
        self.assertEqual(self.look(15.0), [])

    def test_null_times_fall_back_to_the_digest_every_so_often(self) -> None:
        """UPDATE_TIME NULL (MariaDB restarted): an SQL edit is still queued within a
        minute, and the digest is read only every ``fallback`` seconds."""
        self.db.null_times = True
        self.feed.startService()
        self.fifo.take(10)
        edited_at = self.clock.seconds() + 1
        run_until(self.clock, edited_at)
        self.db.modified["TS-2"] = T0 + timedelta(seconds=5)
        for _ in range(120):
            run_until(self.clock, self.clock.seconds() + 1)
            if self.fifo.take(10):
                break
        self.assertLess(self.clock.seconds() - edited_at, 60)
        digests = [c for c in self.db.history if c.op == "table_times" and c.detail]
        self.assertLessEqual(len(digests), 3)  # the first look, one fallback, maybe a recheck


class PaceTests(unittest.TestCase):
    def test_many_sites_look_less_often_but_at_least_every_45_s(self) -> None:
        """One site keeps the 2 s look (the 5 s rule with no request); 400 sites make
        about 10 looks a second in all; no site ever waits more than 45 s (a plain
        SQL edit is planned within a minute)."""
        self.assertEqual(interval_for(1), 2.0)
        self.assertEqual(interval_for(20), 2.0)
        self.assertAlmostEqual(400 / interval_for(400), 10.0, places=0)
        self.assertEqual(interval_for(500), 45.0)
        self.assertEqual(interval_for(5000), 45.0)


class RunningPaceTests(ChangeFeedCase):
    def test_a_running_feed_takes_a_new_interval_from_its_next_look(self) -> None:
        """A SIGHUP that grows a bench re-paces the sites already running, not only
        the new ones."""
        self.feed.startService()
        run_until(self.clock, self.clock.seconds() + 10)
        before = self.feed.looks
        self.feed.interval = 45.0
        run_until(self.clock, self.clock.seconds() + 90)
        self.assertLessEqual(self.feed.looks - before, 3)  # one at the old pace, then 45 s
        self.assertEqual(self.feed.interval, 45.0)


class FollowUpTests(ChangeFeedCase):
    def test_request_is_planned_now_and_twice_after_the_commit(self) -> None:
        """A socket request queues the name now, 1.5 s and 4 s later."""
        self.feed.startService()
        self.look()
        self.feed.requested("TS-1")
        self.assertEqual(self.fifo.take(10), ["TS-1"])
        run_until(self.clock, self.clock.seconds() + 1.5)
        self.assertEqual(self.fifo.take(10), ["TS-1"])
        run_until(self.clock, self.clock.seconds() + 1.0)
        self.assertEqual(self.fifo.take(10), [])
        run_until(self.clock, self.clock.seconds() + 1.5)
        self.assertEqual(self.fifo.take(10), ["TS-1"])

    def test_stop_cancels_pending_follow_ups(self) -> None:
        """Stopping leaves no follow-up behind (checked by the cleanup)."""
        self.feed.startService()
        self.feed.requested("TS-1")
        self.feed.requested("TS-2")
        self.feed.stopService()


class JobIdRecorderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.db = FakeDatabase(self.clock)
        self.recorder = JobIdRecorder(self.clock, self.db)  # type: ignore[arg-type]
        self.addCleanup(self.check_clean)

    def check_clean(self) -> None:
        self.recorder.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_write_per_round_newest_id_wins(self) -> None:
        """Ids recorded while a write is in flight go in the next write, the
        newest per schedule."""
        self.db.hold.add("write_job_ids")
        self.recorder.record([("TS-1", "a")])
        self.recorder.record([("TS-1", "b"), ("TS-2", "c")])
        self.recorder.record([("TS-1", "d")])
        self.assertEqual(self.db.calls["write_job_ids"], 1)
        self.db.hold.clear()
        self.db.release()
        self.assertEqual(self.db.calls["write_job_ids"], 2)
        self.assertEqual(self.db.job_ids, {"TS-1": "d", "TS-2": "c"})
        self.assertEqual(self.recorder.written, 3)

    def test_failed_write_is_retried_without_losing_newer_ids(self) -> None:
        """MariaDB away: the ids are kept and written when it returns; an id
        recorded meanwhile wins over the failed batch's."""
        self.db.down = True
        self.recorder.record([("TS-1", "a"), ("TS-2", "b")])
        self.recorder.record([("TS-1", "c")])
        self.db.down = False
        run_until(self.clock, 10)
        self.assertEqual(self.db.job_ids, {"TS-1": "c", "TS-2": "b"})

    def test_write_failing_after_stop_schedules_nothing(self) -> None:
        """A write in flight at stop that then fails (MariaDB's pool is being
        closed) leaves no retry behind (seen as a dirty reactor in a fault test)."""
        self.db.hold.add("write_job_ids")
        self.recorder.record([("TS-1", "a")])
        self.recorder.stop()
        self.db.down = True
        self.assertEqual(self.db.release("write_job_ids"), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.recorder.record([("TS-2", "b")])  # a claim round finishing after stop
        self.assertEqual(self.db.calls["write_job_ids"], 1)

    def test_locked_rows_are_quiet_and_retried(self) -> None:
        """A row locked by the BTU app's transaction logs nothing above debug."""
        calls = []

        def locked(job_ids: object) -> object:
            calls.append(job_ids)
            if len(calls) == 1:
                from twisted.internet.defer import fail

                return fail(RowsLocked("Lock wait timeout exceeded"))
            return FakeDatabase.write_job_ids(self.db, job_ids)  # type: ignore[arg-type]

        self.db.write_job_ids = locked  # type: ignore[method-assign]
        with capturedLogs() as events:
            self.recorder.record([("TS-1", "a")])
            run_until(self.clock, 10)
        self.assertEqual(self.db.job_ids, {"TS-1": "a"})
        self.assertEqual(
            [e for e in events if e.get("log_level") not in (LogLevel.debug,)], []
        )
