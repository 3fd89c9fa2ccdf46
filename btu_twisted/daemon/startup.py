"""Start-up's shared pieces: the one-line failure an admin reads, and how the process ends.

Both the one-site service and the service of a bench's sites start the same
way (pools, a check with a time limit, a fatal line on stderr, exit status 1),
so what they share lives here, apart from either service.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from btu_twisted.config import Config
from btu_twisted.sources.db_pool import DbPool
from btu_twisted.sources.mariadb import Database

STARTUP_CHECK_TIMEOUT = 10.0

#: A fatal error's clean shutdown may take this long before the process just exits.
FATAL_EXIT_SECS = 1.0


class StartupError(Exception):
    """The daemon cannot start; the message is the one line an admin sees."""


def exit_on_fatal(reactor: Any) -> Callable[[str], None]:
    """twistd has no way to stop with a failure status, so exit(1) after a clean shutdown.

    twistd starts the service before the reactor runs, so a start-up that fails
    at once (a broken schedules file, a socket path it cannot bind) reaches
    here with the reactor not yet running: ``reactor.stop()`` would raise and
    leave a process that runs on, serving nothing.  The stop therefore waits
    for the reactor to run, and a shutdown that hangs (a service that does not
    answer while stopping) ends the process all the same after
    ``FATAL_EXIT_SECS``: systemd must see the failure.
    """
    stopping: list[str] = []

    def fatal(message: str) -> None:
        # twistd has replaced sys.stderr with its log; the admin's terminal (or
        # journald) is still file descriptor 2.
        os.write(2, f"btu: {message}\n".encode("utf-8", "replace"))
        if stopping:
            return
        stopping.append(message)
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.callWhenRunning(stop)

    def stop() -> None:
        reactor.callLater(FATAL_EXIT_SECS, os._exit, 1)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping (SIGTERM meanwhile): the trigger above still exits 1

    return fatal


def database_of(config: Config, reactor: Any, pool: DbPool | None = None) -> Database | None:
    """The config's MariaDB (not started), on ``pool`` (a bench's, shared by its sites)
    or on a pool of its own; None when schedules come from a file only."""
    if not config.uses_mariadb:
        return None
    return Database(
        reactor,
        host=config.mysql_host or "",
        port=config.mysql_port,
        user=config.mysql_user or "",
        password=config.mysql_password or "",
        database=config.mysql_database or "",
        max_connections=config.mysql_max_connections,
        pool=pool,
    )


def startup_failure(failure: Any, log: Logger) -> str:
    """The one line a failed start-up ends with, logged as critical (an unexpected
    error with its traceback too)."""
    if failure.check(StartupError):
        message = str(failure.value)
    else:
        log.failure("start-up failed", failure)
        message = f"start-up failed: {_reason(failure.value)}"
    log.critical("{message}", message=message)
    return message


def settled(d: Deferred[Any]) -> Deferred[None]:
    """Fires (with None) once ``d`` has fired, leaving ``d``'s own result as it was
    for its other callbacks (awaiting ``d`` itself would take it)."""
    after: Deferred[None] = Deferred()

    def passed(result: Any) -> Any:
        after.callback(None)
        return result

    d.addBoth(passed)
    return after


class _Starting(Protocol):
    started: Deferred[None] | None
    running: int


async def not_ready_for_reload(service: _Starting) -> str | None:
    """Why a reload cannot run now, or None once the start has finished (a reload
    right after ``systemctl start`` waits for it instead of being refused)."""
    if service.started is None:
        return "the daemon has not started"
    if not service.started.called:
        await settled(service.started)
    return None if service.running else "the daemon is stopping"


async def maybe_deferred(result: Any) -> Any:
    """``result``, awaited when it is a Deferred (stopService may return either)."""
    if isinstance(result, Deferred):
        return await result
    return result


def reason_of(error: BaseException) -> str:
    """An error as the one line an admin reads."""
    text = str(error) or type(error).__name__
    return " ".join(text.split())[:300]


_reason = reason_of



__all__ = ["FATAL_EXIT_SECS", "STARTUP_CHECK_TIMEOUT", "StartupError", "database_of",
           "exit_on_fatal", "maybe_deferred", "not_ready_for_reload", "reason_of", "settled",
           "startup_failure"]
