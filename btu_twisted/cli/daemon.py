"""``btu ping|reload [SCHEDULE]|cancel|pause|resume|status``: talk to the running daemon over its Unix socket.

The request is exactly what the BTU app sends (one JSON object), followed by a
newline so the daemon need not wait for the object's end.  The reply is read
up to its newline; a daemon that closes instead (the Rust one writes no
terminator) still counts as having answered.  Every wait has a deadline, so a
wedged daemon gives exit 3 instead of a hung terminal.
"""

from __future__ import annotations

import argparse
import json
import socket

from btu_twisted.cli.common import FAILED, OK, UNREACHABLE, CliError, Context, flatten

__all__ = ["RELOAD_TIMEOUT", "REQUEST_TIMEOUT", "cmd_cancel", "cmd_pause", "cmd_ping", "cmd_reload",
           "cmd_resume", "cmd_status", "request"]

#: Seconds allowed for connecting, sending and the whole reply (the BTU app uses 5 too).
REQUEST_TIMEOUT = 5.0
#: A reload answers once the whole schedules file is read and checked: 50,000
#: schedules take about 5 s, so the reply may take this long once connected.
RELOAD_TIMEOUT = 120.0
#: The status reply waits for Redis to count the planned runs (3 s at most).
STATUS_TIMEOUT = 10.0
#: A reply longer than this is not one of the daemon's lines.
_MAX_REPLY = 1024 * 1024


def request(path: str, request_type: str, content: str | None,
            timeout: float | None = None, reply_timeout: float | None = None) -> str:
    """Send one request and return the reply line (without its newline).

    ``timeout`` (default :data:`REQUEST_TIMEOUT`) applies to connecting and
    sending, ``reply_timeout`` (default: the same) to waiting for the reply;
    CliError with exit 3 when the daemon cannot be reached.
    """
    if timeout is None:
        timeout = REQUEST_TIMEOUT
    if reply_timeout is None:
        reply_timeout = timeout

    def unreachable(reason: str) -> CliError:
        return CliError(f"cannot reach the btu daemon at {path}: {reason}", UNREACHABLE)

    payload = json.dumps({"request_type": request_type, "request_content": content}) + "\n"
    chunks: list[bytes] = []
    size = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(payload.encode("utf-8"))
            sock.settimeout(reply_timeout)
            timeout = reply_timeout  # what the message below names
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if b"\n" in chunk or size > _MAX_REPLY:
                    break
        except TimeoutError:
            raise unreachable(f"no reply within {timeout:g} s") from None
        except OSError as error:
            raise unreachable(error.strerror or str(error) or type(error).__name__) from None
    data = b"".join(chunks)
    if not data:
        raise unreachable("the daemon closed the connection without replying")
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    return line.decode("utf-8", "replace")


def _ask(ctx: Context, request_type: str, content: str | None,
         reply_timeout: float | None = None) -> str:
    reply = request(ctx.config().socket_path, request_type, content,
                    reply_timeout=reply_timeout)
    if reply.startswith("Error:"):
        raise CliError(f"the daemon refused the request: {reply}", FAILED)
    return reply


def _show_reply(ctx: Context, reply: str) -> int:
    if ctx.json:
        ctx.emit_json({"reply": reply})
    else:
        ctx.line(reply)
    return OK


def cmd_ping(ctx: Context, args: argparse.Namespace) -> int:
    """Check that the daemon answers (``pong``)."""
    return _show_reply(ctx, _ask(ctx, "ping", None))


def cmd_reload(ctx: Context, args: argparse.Namespace) -> int:
    """Ask the daemon to re-read one schedule and plan its next run or, with no
    name, to re-read its schedules_file.

    A name goes as ``reload`` with the name, not as the BTU app's
    ``create_task_schedule``: the app sends that before its row is committed,
    so the daemon takes any name there; here it looks the name up and answers
    ``Error:`` (exit 1) for one that neither MariaDB nor the file has.
    """
    return _show_reply(ctx, _ask(ctx, "reload", args.name, reply_timeout=RELOAD_TIMEOUT))


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    """Ask the daemon to drop one schedule's planned run."""
    return _show_reply(ctx, _ask(ctx, "cancel_task_schedule", args.name))


def cmd_pause(ctx: Context, args: argparse.Namespace) -> int:
    """Ask the daemon to pause one schedule until ``btu resume``; an unknown name exits 1,
    a schedule already paused exits 0 and says so."""
    return _show_reply(ctx, _ask(ctx, "pause_task_schedule", args.name))


def cmd_resume(ctx: Context, args: argparse.Namespace) -> int:
    """Ask the daemon to resume a paused schedule, planned from now; an unknown name
    exits 1, a schedule not paused exits 0 and says so."""
    return _show_reply(ctx, _ask(ctx, "resume_task_schedule", args.name))


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    """Show the daemon's status document; ``--json`` passes it through unchanged."""
    # The daemon counts the sorted set before it answers (a few seconds at most).
    reply = _ask(ctx, "status", None, reply_timeout=STATUS_TIMEOUT)
    try:
        status = json.loads(reply)
    except ValueError:
        raise CliError(f"the daemon's status reply is not JSON: {reply[:200]}", FAILED) from None
    if not isinstance(status, dict):
        raise CliError("the daemon's status reply is not a JSON object", FAILED)
    if ctx.json:
        ctx.line(reply)
    else:
        ctx.pairs(flatten(status))
    return OK
