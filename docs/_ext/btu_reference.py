"""Generate the configuration and ``btu`` command references for the Sphinx site.

Both references are written from the code, so they cannot fall behind it:

* the configuration reference from ``btu_twisted.config.toml_fields()`` (every
  TOML key: its type, default, whether it is a secret) and, for each key's
  meaning and example, from the comment block above the key in
  ``etc/btu_scheduler.toml``;
* the command reference from ``btu_twisted.cli.build_parser()``.

The functions that build the text are pure (no Sphinx import), so
``tests/test_docs.py`` runs them without building the site.  ``setup()`` hooks
them into Sphinx: at ``builder-inited`` the two pages are written to
``docs/_generated/`` (git-ignored) and every problem found on the way (a Config
key without a description in the TOML, a described key that no longer exists)
is a Sphinx warning, so ``sphinx-build -W`` fails.
"""

from __future__ import annotations

import argparse
import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any

# --- Which keys belong to which way of running the daemon ---------------------

ONE_SITE = "one site"
SCHEDULES_FILE = "schedules file"
BENCH = "bench mode"
SITES = "frappe_sites"
MODES = (ONE_SITE, SCHEDULES_FILE, BENCH, SITES)

_EVERY = MODES
_MARIADB = (ONE_SITE, BENCH, SITES)


@dataclass(frozen=True)
class KeyGroup:
    """A heading of the reference: the keys under it and the modes that use them."""

    title: str
    modes: tuple[str, ...]
    keys: tuple[str, ...]
    note: str = ""


# Every Config key is in exactly one group (tests/test_docs.py checks it, and
# the build warns about a key in none).  The order is the reference's order.
GROUPS: tuple[KeyGroup, ...] = (
    KeyGroup("Identity and timing", _EVERY, (
        "name", "environment_name", "full_refresh_internal_secs",
        "scheduler_polling_interval", "time_zone_string", "tracing_level",
        "startup_without_database_connections",
    )),
    KeyGroup("MariaDB: the Frappe site's database", _MARIADB, (
        "mysql_user", "mysql_password", "mysql_host", "mysql_port", "mysql_max_connections",
    ), "Bench mode and ``frappe_sites`` read them from each site's ``site_config.json``; "
       "keys set in the TOML win. Leave every ``mysql_*`` key out to use only a schedules file."),
    KeyGroup("MariaDB: one site only", (ONE_SITE, BENCH), (
        "mysql_database", "webserver_host_header",
    ), "Refused with ``frappe_sites``: each site's own is read from its ``site_config.json``."),
    KeyGroup("Schedules without Frappe", (SCHEDULES_FILE, ONE_SITE, BENCH), (
        "schedules_file",
    ), "Refused with ``frappe_sites``. With ``mysql_*`` keys too, both sets of schedules run."),
    KeyGroup("Redis: where the RQ workers take their jobs", _EVERY, (
        "rq_host", "rq_port", "rq_url", "rq_username", "rq_password", "rq_database",
        "rq_tls_ca_file", "rq_tls_cert_file", "rq_tls_key_file",
        "rq_sentinels", "rq_sentinel_service", "rq_sentinel_username", "rq_sentinel_password",
        "rq_queue_prefix", "redis_key_prefix",
    ), "Bench mode and ``frappe_sites`` derive them from the bench's ``redis_queue``; "
       "keys set in the TOML win."),
    KeyGroup("Unix socket: how the BTU app reaches the daemon", _EVERY, (
        "socket_path", "socket_file_group_owner", "socket_mode",
    )),
    KeyGroup("Frappe web server (job_builder = \"frappe\")", _MARIADB, (
        "webserver_ip", "webserver_port", "webserver_token", "webserver_scheme",
        "webserver_ca_file", "webserver_timeout_secs",
    )),
    KeyGroup("How jobs of BTU schedules are built", _MARIADB, (
        "job_builder", "frappe_user", "frappe_job_id_style", "overlap",
    ), "Schedules of a schedules file always use the ``function`` builder and set their "
       "own ``overlap``."),
    KeyGroup("Bench mode", (ONE_SITE, BENCH, SITES), (
        "frappe_bench_path", "frappe_site_name", "frappe_sites",
    )),
    KeyGroup("Job lifetimes, missed runs, history and metrics", _EVERY, (
        "result_ttl", "failure_ttl", "misfire_grace_secs", "run_history_length",
        "metrics_port", "metrics_host",
    )),
    KeyGroup("Schedule health", _EVERY, (
        "schedule_health", "health_follow_secs", "health_failing_warning",
        "health_failing_critical", "health_late_secs", "health_stuck_grace_secs",
        "health_metrics_max_schedules", "health_webhook_url",
    ), "``btu health``, the status page, ``/metrics`` and the webhook read the same records."),
)

# Keys of a group whose modes are narrower than the group's.
KEY_MODES: Mapping[str, tuple[str, ...]] = {
    "frappe_bench_path": (BENCH, SITES),
    "frappe_site_name": (ONE_SITE, BENCH),
    "frappe_sites": (SITES,),
}


def modes_of(key: str) -> tuple[str, ...] | None:
    """The modes that use ``key``, or None when no group lists it."""
    if key in KEY_MODES:
        return KEY_MODES[key]
    for group in GROUPS:
        if key in group.keys:
            return group.modes
    return None


def classification_problems(keys: Iterable[str]) -> list[str]:
    """Keys no group lists, listed twice, or listed but not Config keys."""
    keys = list(keys)
    listed = [key for group in GROUPS for key in group.keys]
    problems = [f"config key {key!r} is in no group of docs/_ext/btu_reference.py GROUPS"
                for key in keys if key not in listed]
    problems += [f"config key {key!r} is in more than one group" for key in sorted(set(listed))
                 if listed.count(key) > 1]
    problems += [f"GROUPS lists {key!r}, which is not a Config key" for key in listed
                 if key not in keys]
    return problems


# --- The comments of etc/btu_scheduler.toml -------------------------------------

_BLOCK_START = re.compile(r"^# ([a-z][a-z0-9_]*): ?(.*)$")
_ASSIGNMENT = re.compile(r"^#?([a-z][a-z0-9_]*)\s*=\s*(.*)$")


@dataclass
class KeyDoc:
    """What ``etc/btu_scheduler.toml`` says about one key."""

    key: str
    lines: list[str] = field(default_factory=list)  # the comment text, "# " removed
    line_number: int = 0
    example: str | None = None  # the "key = value" line (set or commented out)
    set_in_example: bool = False


def parse_toml_comments(text: str) -> dict[str, KeyDoc]:
    """Each ``# key: ...`` block of the example config, with the line that follows it.

    A block starts with ``# key: ...`` after a line that is not a comment (so a
    wrapped line such as ``# prefix: a daemon ...`` inside a block is just more
    comment) and runs to the ``key = value`` (or ``#key = value``) line of the
    same key; a line of anything else ends it early (the key then has a
    description but no example).
    """
    docs: dict[str, KeyDoc] = {}
    current: KeyDoc | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        start = _BLOCK_START.match(line)
        assignment = _ASSIGNMENT.match(line)
        if assignment and current is not None and assignment.group(1) == current.key:
            current.example = f"{current.key} = {assignment.group(2)}"
            current.set_in_example = not line.startswith("#")
            current = None
            continue
        if start and current is None:  # inside a block, "# word: ..." is more comment
            current = KeyDoc(start.group(1), [start.group(2)], number)
            docs[current.key] = current
            continue
        if current is not None and line.startswith("#") and not assignment:
            current.lines.append(line[2:] if line.startswith("# ") else line[1:])
            continue
        current = None
    return docs


# --- reStructuredText helpers ---------------------------------------------------------

_RST_SPECIAL = re.compile(r"([\\*`_|])")


def rst_escape(text: str) -> str:
    return _RST_SPECIAL.sub(r"\\\1", text)


def literal(text: str) -> str:
    """``text`` as an inline literal (no backquotes inside any of our values)."""
    return f"``{text}``" if text else '``""``'


def heading(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def _marked_up(text: str, keys: Sequence[str]) -> str:
    """Escape ``text`` and show every config key in it as a literal.

    Only keys with an underscore: ``name`` is also an English word.
    """
    keys = [key for key in keys if "_" in key]
    if not keys:
        return rst_escape(text)
    pattern = re.compile(r"(?<![\w<{])(" + "|".join(sorted(map(re.escape, keys), key=len,
                                                          reverse=True)) + r")(?![\w>}])")
    parts = pattern.split(text)
    return "".join(literal(part) if i % 2 else rst_escape(part) for i, part in enumerate(parts))


def meaning_rst(lines: Sequence[str], keys: Sequence[str] = ()) -> list[str]:
    """The comment block as paragraphs; lines indented further are a literal block."""
    out: list[str] = []
    paragraph: list[str] = []
    block: list[str] = []

    def flush_paragraph() -> None:
        if paragraph:
            out.extend([_marked_up(" ".join(" ".join(paragraph).split()), keys), ""])
            paragraph.clear()

    def flush_block() -> None:
        if block:
            out.extend(["::", ""] + ["   " + line for line in block] + [""])
            block.clear()

    for line in lines:
        if line.startswith("  ") and line.strip():
            flush_paragraph()
            block.append(line.rstrip())
        elif block and line.startswith(" ") and line.strip():
            block.append(line.rstrip())
        else:
            flush_block()
            if line.strip():
                paragraph.append(line)
            else:
                flush_paragraph()
    flush_block()
    flush_paragraph()
    return out


# --- The configuration reference ------------------------------------------------------


def _default_text(spec: Any) -> str:
    if spec.default is MISSING:
        return "none (required)"
    value = spec.default
    if value is None:
        return "none"
    if spec.name.endswith("_mode") and isinstance(value, int):
        return literal(f'"{value:04o}"')
    if isinstance(value, bool):
        return literal("true" if value else "false")
    if isinstance(value, str):
        return literal(f'"{value}"')
    return literal(repr(value))


def _required_text(spec: Any, doc: KeyDoc | None) -> str:
    if spec.default is MISSING:
        return "yes"
    description = " ".join(doc.lines) if doc else ""
    if "required" in description.lower():
        return "in some set-ups (see below)"
    return "no"


def _secret_text(spec: Any) -> str:
    if spec.metadata.get("secret"):
        return "yes: never shown (``btu print-config`` masks it, logs never name it)"
    if spec.metadata.get("mask") is not None:
        return "in part: the password in it is masked wherever it is shown"
    return "no"


def config_reference(specs: Sequence[Any], toml_text: str,
                     toml_name: str = "etc/btu_scheduler.toml") -> tuple[str, list[str]]:
    """The reference page's body (sections from level ``-``) and its problems.

    ``specs`` are ``btu_twisted.config.toml_fields()``; a problem is a key
    without a description or example in ``toml_text``, a described key that is
    no Config key, or a key no group classifies.
    """
    docs = parse_toml_comments(toml_text)
    by_name = {spec.name: spec for spec in specs}
    names = list(by_name)
    problems = classification_problems(names)
    for name in names:
        doc = docs.get(name)
        if doc is None or not " ".join(doc.lines).strip():
            problems.append(f"config key {name!r} has no description in {toml_name} "
                            f"(add a '# {name}: ...' comment block above its line)")
        elif doc.example is None:
            problems.append(f"config key {name!r} has no example line '{name} = ...' or "
                            f"'#{name} = ...' right after its comment in {toml_name}")
    for key, doc in docs.items():
        if key not in by_name:
            problems.append(f"{toml_name}:{doc.line_number}: describes {key!r}, "
                            "which is not a Config key")

    out: list[str] = []
    out += heading("All keys at a glance", "-")
    out += [".. list-table::", "   :header-rows: 1", "   :widths: 30 18 18 14 20", "",
            "   * - key", "     - type", "     - default", "     - required",
            "     - used in"]
    for group in GROUPS:
        for name in group.keys:
            spec = by_name.get(name)
            if spec is None:
                continue
            out += [f"   * - :ref:`{name} <config-{name}>`",
                    f"     - {literal(str(spec.type))}",
                    f"     - {_default_text(spec)}",
                    f"     - {_required_text(spec, docs.get(name))}",
                    f"     - {', '.join(modes_of(name) or ('?',))}"]
    out.append("")
    unclassified = [name for name in names if modes_of(name) is None]
    groups = list(GROUPS) + ([KeyGroup("Not classified", (), tuple(unclassified))]
                             if unclassified else [])
    for group in groups:
        out += heading(group.title, "-")
        if group.note:
            out += [group.note, ""]
        for name in group.keys:
            spec = by_name.get(name)
            if spec is None:
                continue
            doc = docs.get(name)
            out += [f".. _config-{name}:", ""]
            out += heading(literal(name), "~")
            out += [f":Type: {literal(str(spec.type))}",
                    f":Default: {_default_text(spec)}",
                    f":Required: {_required_text(spec, doc)}",
                    f":Used in: {', '.join(modes_of(name) or ('not classified',))}",
                    f":Secret: {_secret_text(spec)}"]
            if doc is not None and doc.example is not None:
                state = "" if doc.set_in_example else " (left unset in the example file)"
                out.append(f":Example: {literal(doc.example)}{state}")
            out.append("")
            if doc is not None:
                out += meaning_rst(doc.lines, names)
            else:
                out += ["*(no description)*", ""]
    return "\n".join(out).rstrip() + "\n", problems


# --- The command reference --------------------------------------------------------------

_WIDTH = 88


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _expanded_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    formatter = argparse.HelpFormatter(parser.prog, width=_WIDTH)
    return " ".join(formatter._expand_help(action).split())


def _argument_name(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest
        return f"[{name}]" if action.nargs == "?" else str(name)
    takes_value = action.nargs != 0
    metavar = action.metavar or action.dest.upper()
    return ", ".join(f"{option} {metavar}" if takes_value else option
                     for option in action.option_strings)


def _arguments(parser: argparse.ArgumentParser, skip: set[str]) -> list[tuple[str, str]]:
    """(name, help) of each argument but ``-h`` and the options named in ``skip``."""
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.dest in skip and action.option_strings:
            continue
        rows.append((_argument_name(action), _expanded_help(parser, action)))
    return rows


def _option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions ``_arguments(parser, skip=set())`` lists, in the same order."""
    return [action for action in parser._actions
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)]


def _subcommands(parser: argparse.ArgumentParser
                 ) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def subcommand_names(parser: argparse.ArgumentParser) -> list[str]:
    return [name for name, _, _ in _subcommands(parser)]


def command_groups(parser: argparse.ArgumentParser) -> list[tuple[str, list[str]]]:
    """(title, command names) as ``btu --help`` groups them; one untitled group
    holding every command when the parser has no grouping."""
    groups: dict[str, list[str]] = getattr(parser, "command_groups", None) or {
        "": subcommand_names(parser)}
    return [(title, names) for title, names in groups.items() if names]


def _argument_list(rows: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    for name, help_text in rows:
        out += [literal(name), f"   {rst_escape(help_text) or '(no help)'}", ""]
    return out


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """The reference page's body (sections from level ``-``): every subcommand."""
    global_options = {action.dest for action in parser._actions
                      if action.option_strings and not isinstance(
                          action, argparse._HelpAction | argparse._VersionAction)}
    out: list[str] = []
    out += heading("Options of every command", "-")
    out += [rst_escape(parser.description or ""), "",
            ".. code-block:: text", ""]
    out += ["   " + line for line in _usage(parser).splitlines()] + [""]
    subcommands = _subcommands(parser)
    everywhere = set.intersection(*(
        {action.dest for action in sub._actions if action.option_strings}
        for _, _, sub in subcommands)) if subcommands else set()
    rows = _arguments(parser, skip=set())
    shared = [row for row, action in zip(rows, _option_actions(parser), strict=True) if action.dest in everywhere]
    alone = [row for row, action in zip(rows, _option_actions(parser), strict=True)
             if action.dest not in everywhere]
    if shared:
        out += ["These go before or after the command's name:", ""]
        out += _argument_list(shared)
    if alone:
        out += ["Before any command:", ""]
        out += _argument_list(alone)
    if parser.epilog:
        out += [rst_escape(parser.epilog), ""]
    out += heading("Commands", "-")
    by_name = {name: (summary, sub) for name, summary, sub in subcommands}
    groups = command_groups(parser)
    for title, names in groups:
        if title:
            out += [f"**{rst_escape(title[0].upper() + title[1:])}**", ""]
        out += [".. list-table::", "   :header-rows: 1", "   :widths: 25 75", "",
                "   * - command", "     - what it does"]
        for name in names:
            out += [f"   * - :ref:`{name} <cli-{name}>`",
                    f"     - {rst_escape(by_name[name][0])}"]
        out.append("")
    for name in (name for _, names in groups for name in names):
        summary, sub = by_name[name]
        out += [f".. _cli-{name}:", ""]
        out += heading(literal(f"btu {name}"), "~")
        out += [rst_escape(sub.description or summary), "", ".. code-block:: text", ""]
        out += ["   " + line for line in _usage(sub).splitlines()] + [""]
        rows = _arguments(sub, skip=global_options)
        if rows:
            out += _argument_list(rows)
        else:
            out += ["No arguments of its own (the options of every command apply).", ""]
    return "\n".join(out).rstrip() + "\n"


# --- Sphinx -------------------------------------------------------------------------------


def generate(repo_root: str) -> tuple[dict[str, str], list[str]]:
    """The generated pages (name -> text) and the problems found."""
    from btu_twisted.cli import build_parser
    from btu_twisted.config import toml_fields

    toml_path = os.path.join(repo_root, "etc", "btu_scheduler.toml")
    with open(toml_path, encoding="utf-8") as file:
        toml_text = file.read()
    config_text, problems = config_reference(toml_fields(), toml_text)
    parser = build_parser(io.StringIO(), io.StringIO())
    return {"config-reference.rst": config_text, "cli-reference.rst": cli_reference(parser)}, problems


def _write_generated(app: Any) -> None:
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    srcdir = str(app.srcdir)
    pages, problems = generate(os.path.dirname(os.path.abspath(srcdir)))
    folder = os.path.join(srcdir, "_generated")
    os.makedirs(folder, exist_ok=True)
    for name, text in pages.items():
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as file:
                if file.read() == text:
                    continue  # unchanged: keep the mtime, so Sphinx reads nothing again
        except FileNotFoundError:
            pass
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
    for problem in problems:
        logger.warning("btu_reference: %s", problem)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _write_generated)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
