"""The start-up check that MariaDB and Redis answer, before the daemon plans anything.

Apart from the service so that what it says to an admin (the one line a
failed start ends with) can be read in one place.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from btu_twisted.config import Config
from btu_twisted.daemon.startup import STARTUP_CHECK_TIMEOUT, StartupError
from btu_twisted.daemon.startup import reason_of as _reason
from btu_twisted.sources.combined import NameConflict, ScheduleSources
from btu_twisted.sources.mariadb import Database
from btu_twisted.store.gateway import RedisGateway

__all__ = ["check_services"]


async def check_services(
    reactor: Any, config: Config, redis: RedisGateway, db: Database | None,
    sources: ScheduleSources,
) -> None:
    """Both at once, so start-up waits for the slower one, not their sum;
    MariaDB's failure is the one reported when both fail."""
    c = config
    mariadb = Deferred.fromCoroutine(_check_mariadb(db, sources))
    mariadb.addTimeout(STARTUP_CHECK_TIMEOUT, reactor)
    redis_check = Deferred.fromCoroutine(_check_redis(reactor, redis))
    # Both are running now: awaiting one after the other waits for the slower.
    mariadb_failure = await _failure_of(mariadb)
    redis_failure = await _failure_of(redis_check)
    if isinstance(mariadb_failure, NameConflict):
        raise StartupError(str(mariadb_failure))
    if mariadb_failure is not None:
        raise StartupError(
            f"cannot use MariaDB database {c.mysql_database!r} at "
            f"{c.mysql_host}:{c.mysql_port} as {c.mysql_user!r}: "
            f"{_reason(mariadb_failure)} "
            "(set startup_without_database_connections = true to start anyway)"
        )
    if redis_failure is not None:
        raise StartupError(
            f"cannot reach Redis at {redis.target.describe()}: "
            f"{_reason(redis_failure)} "
            "(set startup_without_database_connections = true to start anyway)"
        )


async def _failure_of(check: Deferred[None]) -> Exception | None:
    """What ``check`` failed with, None once it passed."""
    try:
        await check
    except Exception as e:
        return e
    return None


async def _check_redis(reactor: Any, redis: RedisGateway) -> None:
    """A refused connection fails at once; the PING proves Redis answers."""
    await redis.reachable(reactor)
    await redis.ping()


async def _check_mariadb(db: Database | None, sources: ScheduleSources) -> None:
    """A Frappe database, with no schedule of the file's names; nothing without MariaDB."""
    if db is not None:
        await db.check()
        await sources.check_names()
