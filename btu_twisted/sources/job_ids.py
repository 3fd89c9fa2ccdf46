"""Each schedule's latest job id goes back to its row, for BTU's "Last Execution Results".

The write is bookkeeping, never part of a run: it happens after the enqueue,
in batches (one statement per claim round, not one per job), and a failure
(MariaDB away, the row locked by an open transaction) only delays it.  Ids
not yet written are kept, newest per schedule, and tried again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from btu_twisted.clock import DelayedCall, as_clock
from btu_twisted.health import Backoff
from btu_twisted.sources.mariadb import RowsLocked

if TYPE_CHECKING:
    from btu_twisted.sources.combined import ScheduleSources
    from btu_twisted.sources.mariadb import Database


class JobIdRecorder:
    log = Logger()

    def __init__(self, clock: IReactorTime, db: Database | ScheduleSources) -> None:
        self._clock = as_clock(clock)
        self._db = db
        self._pending: dict[str, str] = {}
        self._writing: Deferred[None] | None = None
        self._retry: DelayedCall | None = None
        self._backoff = Backoff(first=2.0, limit=60.0)
        self._stopped = False
        self.written = 0

    def record(self, job_ids: Iterable[tuple[str, str]]) -> None:
        """Remember (schedule, job id) pairs and write them soon."""
        self._pending.update(job_ids)
        self._start()

    def stop(self) -> None:
        """No write starts or is retried after this: the database pool closes next."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def _start(self) -> None:
        if self._stopped or self._writing is not None or not self._pending:
            return
        if self._retry is not None and self._retry.active():
            return  # waiting out a failure; the retry takes these too
        d = Deferred.fromCoroutine(self._write())
        if not d.called:
            self._writing = d

    async def _write(self) -> None:
        try:
            while self._pending and not self._stopped:
                batch, self._pending = self._pending, {}
                try:
                    written = await self._db.write_job_ids(batch)
                except Exception as e:
                    # Newer ids recorded meanwhile win over the batch's.
                    self._pending = {**batch, **self._pending}
                    self._failed(e)
                    return
                # ScheduleSources says how many had a row; a Database writes them all.
                self.written += len(batch) if written is None else written
                self._backoff.reset()
        finally:
            self._writing = None

    def _failed(self, error: Exception) -> None:
        if self._stopped:
            return
        delay = self._backoff.next_delay()
        if isinstance(error, RowsLocked):
            self.log.debug("redis_job_id rows locked; writing again in {delay} s", delay=delay)
        elif self._db.health.up:
            self.log.warn(
                "writing redis_job_id of {count} schedules failed ({error}); "
                "trying again in {delay} s",
                count=len(self._pending), error=error, delay=delay,
            )
        self._retry = self._clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._start()
