"""``btu clear-last-run NAME``: undo a last run recorded in the future.

``<redis_key_prefix>last_enqueued`` keeps, per schedule, the latest scheduled time
already enqueued, and the planner never plans at or before it: that is what
stops a slow planner or a second daemon from bringing a run back.  A clock
that once ran ahead (a VM restored from a snapshot, a bad NTP step) leaves a
value years ahead, and the schedule is then planned for that far future
(issue 12 part 4).  The daemon reports such a schedule; this command is the
repair it names.  It deletes the field only if it still holds the value shown
(a daemon enqueueing meanwhile is not overridden) and then asks the daemon, if
it answers, to plan the schedule again at once; otherwise the next full
refresh does.

A value that is not ahead of now is normal bookkeeping, and clearing it would
let a run that already happened be planned again, so that needs ``--force``.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from btu_twisted.cli.common import FAILED, OK, CliError, Context
from btu_twisted.cli.daemon import request
from btu_twisted.records import echo
from btu_twisted.store.keys import Keys
from btu_twisted.store.scripts import CLEAR_LAST_RUN as _CLEAR

__all__ = ["cmd_clear_last_run"]

# _CLEAR: lua/clear_last_run.lua, a compare-and-delete of the last run.


def _when(raw: bytes | str) -> tuple[float | None, str]:
    """The recorded unix seconds and how to show them (the raw text when it is not a number).

    redis-py types the reply ``bytes | str``; it is str only with decode_responses.
    """
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    try:
        seconds = float(text)
        shown = datetime.fromtimestamp(seconds, UTC).isoformat()
    except (ValueError, OverflowError, OSError):
        return None, repr(text)
    return seconds, shown


def cmd_clear_last_run(ctx: Context, args: argparse.Namespace) -> int:
    """Delete one schedule's recorded last run and ask the daemon to plan it again."""
    name: str = args.name
    config = ctx.config()
    connection = ctx.redis()
    last_enqueued = Keys(config.redis_key_prefix).last_enqueued
    raw = connection.hget(last_enqueued, name)
    if raw is None:
        raise CliError(f"no last run is recorded for schedule {echo(name)}; nothing to clear", FAILED)
    seconds, shown = _when(raw)
    now = datetime.now(UTC).timestamp()
    if seconds is not None and seconds <= now and not args.force:
        raise CliError(f"the last run of {name} is {shown}, not ahead of now; nothing to clear "
                       "(--force clears it anyway, and may let that run be planned again)",
                       FAILED)
    if not connection.eval(_CLEAR, 1, last_enqueued, name, raw):
        raise CliError(f"the last run of {name} changed while clearing it; look again", FAILED)
    reply: str | None
    try:
        reply = request(config.socket_path, "create_task_schedule", name)
        daemon_error = reply if reply.startswith("Error:") else None
    except CliError as error:
        reply, daemon_error = None, error.message
    if ctx.json:
        ctx.emit_json({"schedule": name, "cleared": seconds if seconds is not None else shown,
                       "cleared_at": shown if seconds is not None else None,
                       "daemon_reply": reply, "daemon_error": daemon_error})
        return OK
    ctx.line(f"Cleared the last run of {name} (was {shown}).")
    if daemon_error is None:
        ctx.line(f"The daemon plans it again now: {reply}")
    else:
        ctx.line(f"The daemon was not told ({daemon_error}); its next full refresh plans "
                 f"{name} again, or run 'btu reload {name}' once it is up.")
    return OK
