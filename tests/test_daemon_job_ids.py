"""A site's job ids go back to MariaDB filtered once, by the sources that know
which schedules have a row (file schedules have no redis_job_id column)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from btu_twisted.sources.combined import FileSchedules, ScheduleSources
from btu_twisted.sources.job_ids import JobIdRecorder
from tests.fakes import EPOCH, FakeDatabase, make_row, run_until
from tests.test_sources import schedule


class JobIdFilterTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        path = Path(self.mktemp())
        path.write_text(schedule("F-1"))
        self.file = FileSchedules(str(path))

    def recorder(self, db: FakeDatabase | None) -> JobIdRecorder:
        sources = ScheduleSources(self.clock, db, self.file)  # type: ignore[arg-type]
        sources.load_file()
        recorder = JobIdRecorder(self.clock, sources)
        self.addCleanup(recorder.stop)
        return recorder

    def test_file_schedules_ids_are_not_written_nor_counted(self) -> None:
        """Everything the timer enqueued is recorded; only MariaDB's rows are
        written, and ``written`` (the status's redis_job_ids_written) counts those."""
        db = FakeDatabase(self.clock, [make_row("TS-1")])
        recorder = self.recorder(db)
        recorder.record([("F-1", "job-f"), ("TS-1", "job-t")])
        run_until(self.clock, self.clock.seconds() + 1)
        self.assertEqual(db.job_ids, {"TS-1": "job-t"})
        self.assertEqual(recorder.written, 1)

    def test_file_only_writes_and_counts_nothing(self) -> None:
        recorder = self.recorder(None)
        recorder.record([("F-1", "job-f")])
        run_until(self.clock, self.clock.seconds() + 1)
        self.assertEqual(recorder.written, 0)

    def test_service_records_every_enqueued_id(self) -> None:
        """The service hands the timer's ids to the recorder as they are: the
        sources' filter is the only one."""
        from twisted.internet.testing import MemoryReactorClock

        from btu_twisted.config import parse_config
        from btu_twisted.daemon.service import BtuService
        from tests.test_frappe_bench import COMMON, make_bench

        bench = make_bench(Path(self.mktemp()), COMMON, {"a.local": {"db_name": "_aaaa", "db_password": "pw-a"}})
        config, _ = parse_config({"frappe_bench_path": str(bench), "frappe_site_name": "a.local",
                                  "socket_path": self.mktemp()})
        service = BtuService(config, MemoryReactorClock())
        self.assertEqual(service.timer._claims._on_job_ids, service.job_ids.record)
