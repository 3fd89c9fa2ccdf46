"""The ``btu`` command: inspect and nudge the scheduler from a shell.

It replaces the Rust ``btu`` CLI (same subcommand names) and adds commands
that talk to the running daemon over its socket, plus a cron preview.  It
reads the daemon's config file and is plain synchronous code: redis-py,
PyMySQL and the standard library's HTTP client, no reactor (see
:mod:`btu_twisted.cli.site` for why), reusing the daemon's request building,
job builders and cron code.

Exit codes: 0 ok; 1 not found, refused or invalid; 2 usage or config
problems; 3 a service (MariaDB, Redis, the daemon, the site) cannot be
reached.  Every error is one ``btu: ...`` line on stderr, never a traceback,
and ``--json`` puts exactly one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from btu_twisted import __version__
from btu_twisted.cli.arguments import PING_METHOD, parse_after, run_count
from btu_twisted.cli.common import (
    FAILED,
    OK,
    UNREACHABLE,
    USAGE,
    CliError,
    Context,
    one_error_line,
)
from btu_twisted.config import DEFAULT_CONFIG_PATH, ConfigError, masked, value_sources

__all__ = ["EVERY_USER_COMMANDS", "FRAPPE_COMMANDS", "build_parser", "main"]

Command = Callable[[Context, argparse.Namespace], int]


class _Lazy:
    """A command whose module is imported only when the command runs.

    Each command module loads what it talks to (redis-py, PyMySQL, croniter,
    Twisted); importing them all to build the parser made ``btu ping`` spend
    most of half a second loading clients it never used.
    """

    def __init__(self, module: str, name: str) -> None:
        self.module = f"btu_twisted.cli.{module}"
        self.name = name

    def __call__(self, ctx: Context, args: argparse.Namespace) -> int:
        command: Command = getattr(importlib.import_module(self.module), self.name)
        return command(ctx, args)


class _ParserExit(Exception):
    """argparse wants to stop (help, version, usage error); main returns ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that writes to the run's streams and reports usage errors in one line."""

    out: TextIO = sys.stdout
    err: TextIO = sys.stderr

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            (self.err if file is sys.stderr else self.out).write(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self.err.write(message)
        raise _ParserExit(status)

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]  # "btu show-job" -> "show-job"
        where = f"{command}: " if command else ""
        self.err.write(f"btu: {where}{one_error_line(message)} (see '{self.prog} --help')\n")
        raise _ParserExit(USAGE)


def cmd_print_config(ctx: Context, args: argparse.Namespace) -> int:
    """Show the settings in effect, secrets masked."""
    config = ctx.config()
    settings = masked(config)
    if ctx.json:
        ctx.emit_json(settings)
    elif config.frappe_bench_path is None:
        ctx.line(f"# {ctx.config_path}")
        ctx.pairs(settings)
    else:
        # Bench mode: most values come from the bench's JSON files; say which.
        ctx.line(f"# {ctx.config_path}, bench {config.frappe_bench_path}")
        sources = value_sources(ctx.config_path, ctx.site)
        ctx.table(("KEY", "VALUE", "FROM"),
                  [(key, value, sources[key]) for key, value in settings.items()], "")
    return OK


#: The titles ``btu --help`` (and the docs' command reference) group the commands under.
EVERY_USER_COMMANDS = "commands for every user (the daemon, its schedules, rq jobs)"
FRAPPE_COMMANDS = "Frappe-only commands (the BTU app's tables in MariaDB, or the site's web server)"


class _CommandGroups:
    """Lists the commands in titled groups in ``--help``, the ones only a Frappe
    site has apart from the ones every user has.

    argparse allows one subparsers action, which lists every command under
    one heading.  Parsing keeps that action; for the help, its listing lines
    move into argument groups of their own (help lines only: parsing never
    reads a group's list).  ``parser.command_groups`` keeps the grouping for
    the docs' reference.
    """

    def __init__(self, parser: argparse.ArgumentParser,
                 commands: argparse._SubParsersAction[Any]) -> None:
        self._parser = parser
        self._commands = commands
        self.titles: dict[str, list[str]] = {EVERY_USER_COMMANDS: [], FRAPPE_COMMANDS: []}

    def file(self, name: str, title: str) -> None:
        self.titles[title].append(name)

    def show(self) -> None:
        listing = {line.dest: line for line in self._commands._get_subactions()}
        for group in self._parser._action_groups:  # "positional arguments": COMMAND alone
            if self._commands in group._group_actions:
                group._group_actions.remove(self._commands)
        for title, names in self.titles.items():
            group = self._parser.add_argument_group(title)
            group._group_actions.extend(listing[name] for name in names)
        self._parser.command_groups = self.titles  # type: ignore[attr-defined]


def _add_global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Options every subcommand takes, valid before or after the subcommand's name."""
    parser.add_argument("--config", metavar="PATH", default=default,
                        help="the daemon's TOML config (default: $BTU_CONFIG, else "
                             f"{DEFAULT_CONFIG_PATH})")
    parser.add_argument("--json", action="store_true",
                        default=False if default is None else default,
                        help="machine-readable output on stdout")
    parser.add_argument("--site", metavar="SITE", default=default,
                        help="with a frappe_sites config: the site to act on")


def build_parser(out: TextIO, err: TextIO) -> argparse.ArgumentParser:
    """The full command line; the streams are where help and usage errors go."""
    parser_class: type[_Parser] = type("_BoundParser", (_Parser,), {"out": out, "err": err})
    parser = parser_class(
        prog="btu",
        description="Inspect and nudge the BTU scheduler (btu_twisted).",
        epilog="Exit codes: 0 ok, 1 not found/refused/invalid, 2 usage or config, "
               "3 a service cannot be reached.",
    )
    _add_global_options(parser, default=None)
    parser.add_argument("--version", action="version", version=f"btu {__version__}")
    # The same options after the subcommand (where people type them).  SUPPRESS
    # keeps a value given before the subcommand when none is given after it.
    common = parser_class(add_help=False)
    _add_global_options(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = _CommandGroups(parser, commands)

    def add(name: str, func: Command | str, summary: str,
            frappe: bool = False) -> argparse.ArgumentParser:
        """``func`` is a command, or ``"module:function"`` under btu_twisted.cli;
        ``frappe``: it needs the Frappe site (its BTU tables or its web server)."""
        sub = commands.add_parser(name, help=summary, description=summary, parents=[common])
        sub.set_defaults(func=_Lazy(*func.split(":")) if isinstance(func, str) else func)
        groups.file(name, FRAPPE_COMMANDS if frappe else EVERY_USER_COMMANDS)
        return sub

    add("print-config", cmd_print_config, "show the configuration, secrets masked")
    add("list-jobs", "jobs:cmd_list_jobs", "list the jobs waiting in the rq queues")
    add("show-scheduled", "schedule:cmd_show_scheduled", "list the planned runs, earliest first")
    add("show-job", "jobs:cmd_show_job", "show one rq job").add_argument("job_id", metavar="JOB_ID")
    add("queue-job-now", "jobs:cmd_queue_job_now",
        "put an existing rq job back on its queue now").add_argument("job_id", metavar="JOB_ID")
    add("list-tasks", "sql:cmd_list_tasks", "list submitted, non-transient BTU Tasks",
        frappe=True)
    add("queue-task-now", "site:cmd_queue_task_now",
        "build a job for a BTU Task and queue it now", frappe=True).add_argument(
        "task", metavar="TASK")
    ping = add("test-ping", "site:cmd_test_ping", "call the site's ping method as the daemon would",
               frappe=True)
    ping.add_argument("--method", default=PING_METHOD,
                      help=f"whitelisted method to call (default {PING_METHOD}; "
                           "frappe.ping needs no BTU app)")
    add("test-pickler", "site:cmd_test_pickler",
        "fetch a task's pickled job from the site", frappe=True).add_argument(
        "task", metavar="TASK")
    add("ping", "daemon:cmd_ping", "check that the daemon answers on its socket")
    add("reload", "daemon:cmd_reload",
        "ask the daemon to re-plan a Task Schedule, or with no SCHEDULE to re-read its "
        "schedules_file").add_argument("name", metavar="SCHEDULE", nargs="?")
    add("cancel", "daemon:cmd_cancel",
        "ask the daemon to drop a Task Schedule's planned run").add_argument(
        "name", metavar="SCHEDULE")
    add("pause", "daemon:cmd_pause",
        "pause a Task Schedule: no run until 'btu resume' (kept across refreshes and "
        "restarts)").add_argument("name", metavar="SCHEDULE")
    add("resume", "daemon:cmd_resume",
        "resume a paused Task Schedule; its next run is planned from now").add_argument(
        "name", metavar="SCHEDULE")
    add("status", "daemon:cmd_status", "show the daemon's status")
    clear = add("clear-last-run", "lastrun:cmd_clear_last_run",
                "forget a Task Schedule's last run recorded in the future (a clock that ran "
                "ahead) and have the daemon plan it again")
    clear.add_argument("name", metavar="SCHEDULE")
    clear.add_argument("--force", action="store_true",
                       help="clear it even when it is not ahead of now")
    history = add("history", "history:cmd_history",
                  "show a schedule's latest runs, newest first, with their jobs' status")
    history.add_argument("name", metavar="SCHEDULE")
    history.add_argument("-n", dest="count", metavar="N", type=run_count, default=20,
                         help="how many runs (default 20)")
    health = add("health", "health:cmd_health",
                 "show whether each schedule works (exit 0 ok, 1 warning, 2 critical)")
    health.add_argument("names", metavar="SCHEDULE", nargs="*",
                        help="only these schedules (default: every one with a run)")
    runs = add("next-runs", "schedule:cmd_next_runs",
               "preview a cron string's next runs (no config needed)")
    runs.add_argument("cron", metavar="CRON", help='e.g. "0 13 * * 1-5"')
    runs.add_argument("--tz", metavar="ZONE",
                      help="IANA zone (default: the site's cron_time_zone, else the "
                           "config's time_zone_string, else UTC)")
    runs.add_argument("--after", metavar="ISO-8601", type=parse_after,
                      help="start after this time (default now; naive times are in --tz)")
    runs.add_argument("-n", dest="count", metavar="N", type=run_count, default=10,
                      help="how many runs (default 10)")
    groups.show()
    return parser


def _service_name(ctx: Context, kind: str) -> str:
    config = ctx.loaded
    if config is None:
        return kind
    if kind == "Redis":
        if config.rq_host is not None:
            return f"Redis at {config.rq_host}:{config.rq_port}"
        from btu_twisted.redis_target import target_of  # stdlib only

        return f"Redis at {target_of(config).describe()}"
    if not config.uses_mariadb:
        return "MariaDB (none configured)"
    return f"MariaDB at {config.mysql_host}:{config.mysql_port}"


def _reason(error: BaseException) -> str:
    args: tuple[object, ...] = getattr(error, "args", ())
    # PyMySQL errors are (code, message); the message alone reads better.
    text = args[1] if len(args) == 2 and isinstance(args[1], str) else str(error)
    return " ".join(text.split())[:300] or type(error).__name__


def _run(ctx: Context, args: argparse.Namespace) -> int:
    """Run the command, turning each known failure into its exit code and one line."""
    try:
        return int(args.func(ctx, args))
    except CliError as error:
        ctx.err.write(f"btu: {error.message}\n")
        return error.code
    except ConfigError as error:
        for problem in error.problems:
            where = "" if error.source in problem else f"{error.source}: "
            ctx.err.write(f"btu: {where}{one_error_line(problem)}\n")
        return USAGE
    except Exception as error:
        code = _client_failure(ctx, error)
        if code is None:
            raise
        return code


def _client_failure(ctx: Context, error: Exception) -> int | None:
    """The exit code for a redis-py, PyMySQL or OS error (after writing its line), else None.

    The clients' exception classes are looked up, not imported: an error of
    theirs can only come from a command that has loaded them already.
    """
    redis_errors = sys.modules.get("redis.exceptions")
    mysql_errors = sys.modules.get("pymysql.err")
    if redis_errors is not None and isinstance(error, redis_errors.RedisError):
        service = _service_name(ctx, "Redis")
        if isinstance(error, redis_errors.ConnectionError):  # includes authentication failures
            ctx.err.write(f"btu: cannot reach {service}: {_reason(error)}\n")
            return UNREACHABLE
        if isinstance(error, redis_errors.TimeoutError):
            ctx.err.write(f"btu: {service} did not answer in time: {_reason(error)}\n")
            return UNREACHABLE
        ctx.err.write(f"btu: {service} refused: {_reason(error)}\n")
        return FAILED
    if mysql_errors is not None and isinstance(error, mysql_errors.MySQLError):
        service = _service_name(ctx, "MariaDB")
        if isinstance(error, mysql_errors.OperationalError):
            ctx.err.write(f"btu: cannot use {service}: {_reason(error)}\n")
            return UNREACHABLE
        ctx.err.write(f"btu: {service} refused: {_reason(error)}\n")
        return FAILED
    if isinstance(error, BrokenPipeError):
        return FAILED  # the reader went away (btu ... | head): nothing left to say
    if isinstance(error, OSError):
        ctx.err.write(f"btu: {error.strerror or _reason(error)}\n")
        return UNREACHABLE
    return None


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run ``btu`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        args = build_parser(out, err).parse_args(list(sys.argv[1:] if argv is None else argv))
    except _ParserExit as stop:
        return stop.code
    ctx = Context(out=out, err=err, json=bool(args.json),
                  config_path=args.config or os.environ.get("BTU_CONFIG") or DEFAULT_CONFIG_PATH,
                  config_explicit=args.config is not None, site=args.site)
    try:
        return _run(ctx, args)
    except KeyboardInterrupt:
        err.write("btu: interrupted\n")
        return 130
    except Exception as error:  # a bug: still one line, and a code scripts can see
        err.write(f"btu: internal error: {type(error).__name__}: {_reason(error)}\n")
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
