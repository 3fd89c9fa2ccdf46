"""Task functions for the demo site, named after BTU's own ``manual_tests``.

The demo points the sample BTU Tasks at these, so a plain ``rq worker`` (no
Frappe installed) can run what the daemon enqueues and show it.
"""

from __future__ import annotations

import time
from typing import Any


def _schedule() -> str:
    from rq import get_current_job

    job = get_current_job()
    meta = job.meta if job is not None else {}
    when = meta.get("scheduled_time")
    stamp = time.strftime("%H:%M:%S", time.localtime(when)) if when else "?"
    return f"schedule {meta.get('task_schedule', '?')}, due {stamp}"


def ping_now(**kwargs: Any) -> str:
    message = f"pong ({_schedule()})"
    print(message, flush=True)
    return message


def ping_with_wait(seconds_to_wait: float = 1, **kwargs: Any) -> str:
    time.sleep(min(float(seconds_to_wait), 5))
    message = f"pong after {seconds_to_wait} s ({_schedule()})"
    print(message, flush=True)
    return message
