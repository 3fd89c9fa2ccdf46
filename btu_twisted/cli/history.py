"""``btu history NAME``: a schedule's latest runs, newest first, with their jobs' status now.

Its pauses and resumes (``btu pause``) are entries too, outcome ``paused`` or
``resumed``, at the time they happened.  A schedule found deleted loses its
history (close_lives.lua), so one created later under the same name starts empty.

The entries are what CLAIM wrote (history.py; the ones the daemon has not filed
yet are filed first); how each job ended (its status, seconds on the queue
and running) is read from each job's hash in one pipelined round trip, so a
job rq has since removed (its result or failure TTL ran out) shows as ``-``
(``null`` in ``--json``).
"""

from __future__ import annotations

import argparse

from btu_twisted.cli.common import FAILED, OK, CliError, Context
from btu_twisted.records import echo, iso_utc
from btu_twisted.store.health_store import parse_time
from btu_twisted.store.history import FOLD_HISTORY, FOLD_TEXTS, PAUSED, RESUMED, Run, parse_run
from btu_twisted.store.keys import JOB_PREFIX, Keys

__all__ = ["cmd_history"]


_NO_END: dict[str, object] = {"status": None, "queue_secs": None, "run_secs": None,
                              "ended_at": None}


def _ends(connection: object, runs: list[Run]) -> list[dict[str, object]]:
    """Each run's job as rq left it: status, seconds on the queue and running, end."""
    pipe = connection.pipeline(transaction=False)  # type: ignore[attr-defined]
    for run in runs:
        if run.job_id:
            pipe.hmget(JOB_PREFIX + run.job_id, "status", "enqueued_at", "started_at",
                       "ended_at")
    replies = iter(pipe.execute() if any(run.job_id for run in runs) else [])
    out: list[dict[str, object]] = []
    for run in runs:
        if not run.job_id:
            out.append(dict(_NO_END))
            continue
        raw = [value.decode("utf-8", "replace") if isinstance(value, bytes) else value
               for value in next(replies)]
        enqueued, started, ended = (parse_time(value) for value in raw[1:])
        out.append({
            "status": raw[0],
            "queue_secs": _secs(enqueued, started),
            "run_secs": _secs(started, ended),
            "ended_at": raw[3] or None,
        })
    return out


def _secs(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(max(0.0, end - start), 3)


def _file_inbox(connection: object, keys: Keys, keep: int) -> None:
    """File what the daemon claimed but has not filed yet (history.py), so the
    latest runs are never missing.  Without the shebang line, which Redis
    before 7.0 cannot read."""
    script = FOLD_HISTORY.split("\n", 1)[1]
    for _ in range(1000):
        waiting = connection.eval(  # type: ignore[attr-defined]
            script, 1, keys.history_inbox, keys.history_base, keep, FOLD_TEXTS)
        if not int(waiting):
            return


def cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    """Show the run history of one schedule."""
    name: str = args.name
    config = ctx.config()
    connection = ctx.redis()
    keys = Keys(config.redis_key_prefix)
    _file_inbox(connection, keys, config.run_history_length)
    raw = connection.lrange(keys.history(name), 0, args.count - 1)
    runs = [run for run in map(parse_run, raw) if run is not None]
    ends = _ends(connection, runs)
    if ctx.json:
        ctx.emit_json([{**run.as_json(end["status"]), **end}  # type: ignore[arg-type]
                       for run, end in zip(runs, ends, strict=False)])
        return OK
    if not runs:
        raise CliError(f"no run history for schedule {echo(name)} (never run, history off, "
                       "or a name the daemon does not know)", FAILED)
    ctx.table(
        ("SCHEDULED", "OUTCOME", "DECIDED AT", "JOB", "STATUS", "QUEUED S", "RAN S"),
        # A pause or resume is no run: its time is DECIDED AT's.
        [("-" if run.outcome in (PAUSED, RESUMED) else iso_utc(run.scheduled), run.outcome,
          run.decided_at, run.job_id or "-",
          end["status"] or "-", _shown(end["queue_secs"]), _shown(end["run_secs"]))
         for run, end in zip(runs, ends, strict=False)],
        "",
    )
    return OK


def _shown(secs: object) -> str:
    return "-" if secs is None else f"{secs:.3f}"


