"""Run a whole ``BtuService`` in the trial reactor against real services."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from btu_twisted.config import parse_config
from btu_twisted.daemon.service import BtuService
from tests.integration.support import REDIS_HOST, REDIS_PORT

ROOT = Path(__file__).resolve().parent.parent.parent


def make_service(values: dict[str, Any]) -> tuple[BtuService, list[str]]:
    """A service whose fatal start-up errors are collected, not exits."""
    config, warnings = parse_config(values)
    fatal: list[str] = []
    return BtuService(config, reactor, on_fatal=fatal.append, warnings=warnings), fatal


async def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, step: float = 0.05) -> Any:
    """Poll ``predicate`` (cheap, synchronous) until it is truthy or time runs out."""
    waited = 0.0
    while waited < timeout:
        value = predicate()
        if value:
            return value
        await deferLater(reactor, step, lambda: None)
        waited += step
    raise AssertionError(f"condition not met within {timeout} s: {predicate}")


def run_worker(
    redis_db: int, queues: list[str], extra_path: str | None = None, url: str | None = None
) -> Any:
    """A real rq burst worker in a child process (on ``url``, else the test Redis's
    database ``redis_db``); fires with its exit status."""
    url = url or f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"
    env = dict(os.environ)
    paths = [str(ROOT)] + ([extra_path] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "tests.jobfuncs", "work", url, *queues]
    return deferToThread(
        subprocess.run, argv, cwd=str(ROOT), env=env, capture_output=True, timeout=120
    )
