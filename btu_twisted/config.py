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
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.logger import LogLevel

from btu_twisted.config_checks import (
    _BUILDER_NEEDS,
    _MARIADB_KEYS,
    Check,
    ConfigError,
    _boolean,
    _builder_problems,
    _integer,
    _Invalid,
    _non_empty_string,
    _octal_mode,
    _one_of,
    _port,
    _positive_float,
    _positive_integer,
    _positive_number,
    _readable_file,
    _redis_problems,
    _redis_url,
    _sentinel_nodes,
    _site_names,
    _source_problems,
    _string,
    _time_zone,
    _unknown_key_warning,
    _WrongType,
)
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

_MASK = "********"

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

# tracing_level values the Rust daemon accepted, and the twisted.logger level
# each means, by name: ``btu`` reads configs too, and should not load Twisted.
_LOG_LEVELS = {
    "TRACE": "debug",
    "DEBUG": "debug",
    "INFO": "info",
    "WARN": "warn",
    "WARNING": "warn",
    "ERROR": "error",
}

# frappe_job_id_style values: which Frappe's create_job_id the frappe_site ids copy.
_FRAPPE_JOB_ID_STYLES = ("v15", "develop", "uuid")


def _key(
    check: Check,
    default: Any = MISSING,
    *,
    secret: bool = False,
    mask: Callable[[Any], Any] | None = None,
) -> Any:
    """Declare a config key: no default means the key is required.

    ``mask`` shows a value that holds a secret in part (a URL's password).
    """
    metadata = {"check": check, "secret": secret, "mask": mask}
    return field(default=default, metadata=metadata)


def _derived() -> Any:
    """Not a TOML key: what parse_config works out for ``frappe_sites`` (empty otherwise)."""
    return field(default_factory=dict, compare=False, metadata={"derived": True})


def toml_fields() -> list[Any]:
    """The Config fields that are TOML keys."""
    return [spec for spec in fields(Config) if not spec.metadata.get("derived")]


@dataclass(frozen=True, kw_only=True, repr=False)
class Config:
    """The daemon's settings, checked; see ``etc/btu_scheduler.toml`` for each key's meaning."""

    name: str | None = _key(_string, None)
    environment_name: str | None = _key(_string, None)
    full_refresh_internal_secs: int = _key(_positive_integer)
    scheduler_polling_interval: int | float = _key(_positive_number)
    time_zone_string: str = _key(_time_zone)
    tracing_level: str = _key(_one_of(_LOG_LEVELS, upper=True), "INFO")
    startup_without_database_connections: bool = _key(_boolean, False)

    # Required unless schedules_file is set (_source_problems); None: no MariaDB at all.
    mysql_user: str | None = _key(_non_empty_string, None)
    mysql_password: str | None = _key(_string, None, secret=True)
    mysql_host: str | None = _key(_non_empty_string, None)
    mysql_port: int = _key(_port, 3306)
    mysql_database: str | None = _key(_non_empty_string, None)
    # TOML [[schedule]] tables (file_schedules.py): schedules without Frappe.
    schedules_file: str | None = _key(_readable_file, None)

    # One of rq_host (+ rq_port), rq_url or rq_sentinels names the Redis (_redis_problems).
    rq_host: str | None = _key(_non_empty_string, None)
    rq_port: int | None = _key(_port, None)
    rq_url: str | None = _key(_redis_url, None, mask=mask_url)
    rq_username: str | None = _key(_non_empty_string, None)
    rq_password: str | None = _key(_string, None, secret=True)
    rq_database: int = _key(_integer(0), 0)
    rq_tls_ca_file: str | None = _key(_readable_file, None)
    rq_tls_cert_file: str | None = _key(_readable_file, None)
    rq_tls_key_file: str | None = _key(_readable_file, None)
    rq_sentinels: tuple[str, ...] | None = _key(_sentinel_nodes, None)
    rq_sentinel_service: str | None = _key(_non_empty_string, None)
    rq_sentinel_username: str | None = _key(_non_empty_string, None)
    rq_sentinel_password: str | None = _key(_string, None, secret=True)
    rq_queue_prefix: str = _key(_string, "")
    # Every key of ours starts with it; one site's daemons per prefix (prefix_guard.py).
    redis_key_prefix: str = _key(_non_empty_string, "btu_scheduler:")

    socket_path: str = _key(_non_empty_string)
    socket_file_group_owner: str | None = _key(_string, None)
    socket_mode: int = _key(_octal_mode, 0o660)

    webserver_ip: str | None = _key(_string, None)
    webserver_port: int | None = _key(_port, None)
    webserver_host_header: str | None = _key(_string, None)
    webserver_token: str | None = _key(_string, None, secret=True)
    webserver_scheme: str | None = _key(_one_of(("http", "https"), upper=False), None)
    webserver_ca_file: str | None = _key(_non_empty_string, None)
    webserver_timeout_secs: float = _key(_positive_float, 30.0)

    job_builder: str = _key(_one_of(tuple(_BUILDER_NEEDS), upper=False), "frappe")
    # Bench mode: keys the file leaves out are read from the bench (frappe_bench.py).
    frappe_bench_path: str | None = _key(_non_empty_string, None)
    frappe_site_name: str | None = _key(_string, None)
    # One daemon for many sites of the bench (sites.py); ["*"]: every site with BTU.
    frappe_sites: tuple[str, ...] | None = _key(_site_names, None)
    frappe_user: str = _key(_non_empty_string, "Administrator")
    frappe_job_id_style: str = _key(_one_of(_FRAPPE_JOB_ID_STYLES, upper=False), "v15")
    # None: Frappe's 600 s / 7 days for frappe_site jobs, rq's own defaults for function jobs.
    result_ttl: int | None = _key(_integer(-1), None)
    failure_ttl: int | None = _key(_integer(-1), None)

    misfire_grace_secs: int | None = _key(_positive_integer, None)
    # MariaDB schedules' overlap (file schedules set their own): "skip" holds a
    # run back while the schedule's previous job is still queued or started.
    overlap: str = _key(_one_of(("allow", "skip"), upper=False), "allow")
    # Runs kept per schedule in its run history (history.py); 0 keeps none.
    run_history_length: int = _key(_integer(0), 100)
    metrics_port: int | None = _key(_port, None)
    metrics_host: str = _key(_non_empty_string, "127.0.0.1")

    # With frappe_sites: each site's own Config, derived as bench mode derives it
    # for frappe_site_name = site; and the sites of ["*"] that could not be read, with why.
    site_configs: Mapping[str, Config] = _derived()
    skipped_sites: Mapping[str, str] = _derived()

    @property
    def is_multi_site(self) -> bool:
        return self.frappe_sites is not None

    @property
    def uses_mariadb(self) -> bool:
        """False when every schedule comes from ``schedules_file``: nothing connects to MariaDB."""
        return self.mysql_database is not None

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in masked(self).items())
        return f"Config({shown})"


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


def masked(config: Config) -> dict[str, object]:
    """Every setting, safe to print or log.

    A secret that is set shows as ``********``; one that is unset stays
    ``None`` so the reader can still tell the two apart.  ``socket_mode`` is
    shown the way the file writes it ("0660"), so the output can be pasted back.
    """
    shown: dict[str, object] = {}
    for spec in toml_fields():
        value = getattr(config, spec.name)
        if spec.metadata["secret"] and value is not None:
            value = _MASK
        elif spec.metadata["mask"] is not None and value is not None:
            value = spec.metadata["mask"](value)
        elif spec.name == "socket_mode":
            value = f"{value:04o}"
        shown[spec.name] = value
    if config.rq_url:
        # What the daemon uses: a user, password or database in the URL wins
        # (the keys themselves are then unset, config checks refuse both).
        for key, part in _URL_PARTS:
            if part in (in_url := parse_url(config.rq_url)):
                shown[key] = _MASK if key == "rq_password" else in_url[part]
    return shown


#: The keys a part of ``rq_url`` stands for.
_URL_PARTS = (("rq_username", "username"), ("rq_password", "password"), ("rq_database", "database"))


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
