"""The lines the control socket answers with.

The BTU app shows its requests' replies to the user as they are (COMPAT.md
section 1), so their wording is kept exactly; the replies to our own requests
(``status``, ``reload``) sit beside them so that one place says what a client
reads.
"""

from __future__ import annotations

import json

from twisted.python.failure import Failure

from btu_twisted.daemon.framing import short_reason

__all__ = ["cancelled", "created", "file_not_reloaded", "file_reloaded", "queue_full",
           "status_line"]


def created(name: str) -> str:
    return f"BTU Scheduler now re-processing Task Schedule {name} in Python RQ."


def queue_full(name: str) -> str:
    return f"Error: the planning queue is full; Task Schedule {name} was not queued."


def cancelled(removed: bool, name: str) -> str:
    if removed:
        return f"Successfully cancelled BTU Task Schedule {name} in Python RQ."
    return f"BTU Task Schedule {name} was not scheduled in Python RQ; nothing to cancel."


def file_reloaded(summary: str) -> str:
    return f"Schedules file reloaded: {summary}."


def file_not_reloaded(failure: Failure) -> str:
    problems = getattr(failure.value, "problems", None)
    if problems:
        return (f"Error: schedules file not reloaded ({len(problems)} problem(s); the last "
                f"good schedules keep running): " + "; ".join(problems))
    return f"Error: schedules file not reloaded: {short_reason(failure)}"


def status_line(status: dict[str, object]) -> str:
    return json.dumps(status, separators=(",", ":"), default=str)
