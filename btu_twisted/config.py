"""Read and check ``btu_scheduler.toml``.

The file is the Rust daemon's, key for key, so an existing install can switch
daemons without editing it; every key btu_twisted adds is optional.  All the
problems in a file are reported at once, because the daemon is usually started
by systemd and fixing one mistake per restart is a slow loop.  Secrets never
appear in an error, a warning or a repr: those end up in the journal, which
more people can read than the file.

The checks live beside the fields they check (in each field's metadata), so
adding a key is one line and the table cannot drift from the dataclass.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.logger import LogLevel

from btu_twisted.config_checks import (
    _MARIADB_KEYS,
    ConfigError,
    _builder_problems,
    _health_problems,
    _Invalid,
    _redis_problems,
    _source_problems,
    _unknown_key_warning,
    _WrongType,
)
from btu_twisted.config_fields import _LOG_LEVELS, _URL_PARTS, Config, masked, toml_fields
from btu_twisted.config_sites import parse_sites, site_config
from btu_twisted.frappe_bench import FILLS, BenchDefaults, bench_defaults
from btu_twisted.redis_target import mask_url, parse_url

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "ConfigError",
    "from_bench",
    "load_config",
    "log_level",
    "masked",
    "parse_config",
    "permission_warning",
    "site_config",
    "toml_fields",
    "value_sources",
]

DEFAULT_CONFIG_PATH = "/etc/btu_scheduler/btu_scheduler.toml"


# The Rust daemon's e-mail feature was compiled out; its users still have these keys.
_EMAIL_KEYS = frozenset(
    {
        "email_address_from",
        "email_host_name",
        "email_host_port",
        "email_account_name",
        "email_account_password",
        "email_addresses",
        "email_on_level",
        "email_when_queuing",
    }
)

def _shown(value: Any, secret: bool) -> str:
    if secret:
        return f"a value of type {type(value).__name__} (not shown: it is a secret)"
    return repr(value)


def parse_config(data: dict[str, Any], source: str = "<config>") -> tuple[Config, list[str]]:
    """Check parsed TOML and build a ``Config``, or raise one ``ConfigError`` listing every problem.

    Unknown keys only warn: the Rust daemon ignored them, and a file that
    worked there must keep working here.
    """
    if "frappe_sites" in data:
        return parse_sites(data, source, parse_config)
    problems: list[str] = []
    values: dict[str, Any] = {}
    unread: frozenset[str] = frozenset()  # keys a bench that could not be read would fill
    if "frappe_bench_path" in data:
        bench = from_bench(data)
        problems += bench.problems
        unread = FILLS if bench.problems else unread
        data = {**bench.values, **data}
    for spec in toml_fields():
        if spec.name not in data:
            if spec.default is MISSING and spec.name not in unread:
                problems.append(f"{spec.name}: required key is missing")
            continue
        raw = data[spec.name]
        try:
            values[spec.name] = spec.metadata["check"](raw)
        except _WrongType as wrong:
            secret = spec.metadata["secret"] or spec.metadata["mask"] is not None
            problems.append(f"{spec.name}: expected {wrong.expected}, got {_shown(raw, secret)}")
        except _Invalid as invalid:
            problems.append(f"{spec.name}: {invalid}")
    named = {problem.split(":")[0] for problem in problems}
    if not unread & set(_MARIADB_KEYS):
        problems += [p for p in _source_problems(data) if p.split(":")[0] not in named]
    problems += [p for p in _builder_problems(data, values) if p.split(":")[0] not in named]
    problems += [p for p in _health_problems(values) if p.split(":")[0] not in named]
    if not unread & {"rq_host", "rq_url", "rq_sentinels"}:
        named = {problem.split(":")[0] for problem in problems}
        problems += [p for p in _redis_problems(data, values) if p.split(":")[0] not in named]

    warnings: list[str] = []
    email = [key for key in data if key in _EMAIL_KEYS]
    if email:
        warnings.append(f"{', '.join(email)}: ignored: btu_twisted does not send e-mail")
    known = [spec.name for spec in toml_fields()]
    for key in data:
        if key not in known and key not in _EMAIL_KEYS:
            warnings.append(_unknown_key_warning(key, known))

    if problems:
        # In field order, as the file is usually laid out; the cross-key checks come last.
        order = {spec.name: i for i, spec in enumerate(toml_fields())}
        problems.sort(key=lambda p: order.get(p.split(":")[0], len(order)))
        raise ConfigError(problems, source)
    config = Config(**values)
    if config.socket_mode & 0o002:
        warnings.append(
            f"socket_mode: {config.socket_mode:04o} lets every local user plan, cancel and "
            "reload schedules; use 0660 with socket_file_group_owner")
    return config, warnings


def from_bench(data: Mapping[str, Any]) -> BenchDefaults:
    """What the bench named by ``frappe_bench_path`` proposes for the keys ``data`` leaves out."""
    bench = bench_defaults(data["frappe_bench_path"], data.get("frappe_site_name"), data)
    for key in [k for k in bench.values if k in data]:
        del bench.values[key]
        del bench.sources[key]
    return bench


def value_sources(path: str, site: str | None = None) -> dict[str, str]:
    """Where each setting of the (already checked) file at ``path`` comes from;
    ``site``: one site of its ``frappe_sites``."""
    with open(path, "rb") as stream:
        data = tomllib.load(stream)
    if site is not None and "frappe_sites" in data:
        data = {key: value for key, value in data.items() if key != "frappe_sites"}
        bench = from_bench({**data, "frappe_site_name": site})
        bench.sources["frappe_site_name"] = "--site (one of frappe_sites)"
    else:
        bench = from_bench(data) if "frappe_bench_path" in data else BenchDefaults()
    sources = {
        spec.name: "config file" if spec.name in data else bench.sources.get(spec.name, "default")
        for spec in toml_fields()
    }
    url = data.get("rq_url", bench.values.get("rq_url"))
    if isinstance(url, str):
        try:
            in_url = parse_url(url)
        except ValueError:
            in_url = {}
        for key, part in _URL_PARTS:
            if part in in_url:
                sources[key] = f"rq_url ({sources['rq_url']})"
    return sources


# TOML reads `socket_mode = 0o660` as the integer 432, which nothing downstream
# can tell from a decimal 432; only the text shows what was meant.
_PREFIXED_SOCKET_MODE = re.compile(r"^[ \t]*socket_mode[ \t]*=[ \t]*[+-]?0[oxb]", re.MULTILINE)


def load_config(path: str) -> tuple[Config, list[str]]:
    """Read, parse and check the file at ``path``; warnings include loose file permissions."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except OSError as error:
        raise ConfigError([f"cannot read config file {path}: {error.strerror or error}"], path) from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as error:
        raise ConfigError([f"config file {path} is not UTF-8 (byte {error.start})"], path) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"config file {path}: TOML syntax error: {error}"], path) from None

    problems = []
    if _PREFIXED_SOCKET_MODE.search(text):
        problems.append(
            'socket_mode: write the mode as a string such as "0660", not a 0o/0x/0b integer'
        )
    try:
        config, warnings = parse_config(data, source=path)
    except ConfigError as error:
        raise ConfigError(problems + error.problems, path) from None
    if problems:
        raise ConfigError(problems, path)

    loose = permission_warning(path, holds_secrets=holds_secrets(config))
    return config, ([loose] if loose else []) + warnings


def holds_secrets(config: Config) -> bool:
    """Whether the config holds a password or token (a URL's password too)."""
    return any(spec.metadata["secret"] and getattr(config, spec.name)
               for spec in toml_fields()) or bool(
        config.rq_url and mask_url(config.rq_url) != config.rq_url)


def log_level(config: Config) -> LogLevel:
    """twisted.logger has no TRACE, so TRACE shows what DEBUG shows."""
    from twisted.logger import LogLevel

    level: LogLevel = LogLevel.levelWithName(_LOG_LEVELS[config.tracing_level])  # unannotated in Twisted
    return level


def permission_warning(path: str | os.PathLike[str], holds_secrets: bool = True) -> str | None:
    """Warn when other users can read the file while it holds passwords (they leak),
    or write it at all (anyone redirects jobs)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    bits = ((stat.S_IROTH, "readable"), (stat.S_IWOTH, "writable"))
    loose = [word for bit, word in bits
             if mode & bit and (holds_secrets or word == "writable")]
    if not loose:
        return None
    why = "it holds passwords" if holds_secrets else "anyone could change where jobs go"
    return (
        f"config file {os.fspath(path)} is {' and '.join(loose)} by other users "
        f"(mode {mode:04o}); {why}"
    )
