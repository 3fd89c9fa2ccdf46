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

import difflib
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from twisted.logger import LogLevel

from btu_twisted.frappe_bench import COMMON_CONFIG, FILLS, BenchDefaults, bench_defaults, site_names
from btu_twisted.redis_target import mask_url, parse_sentinel, parse_url

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

# Keys each job builder cannot work without, beyond the always-required ones.
_BUILDER_NEEDS = {
    "frappe": ("webserver_ip", "webserver_port", "webserver_token"),
    "frappe_site": ("frappe_site_name",),
    "function": (),
}

# frappe_job_id_style values: which Frappe's create_job_id the frappe_site ids copy.
_FRAPPE_JOB_ID_STYLES = ("v15", "develop", "uuid")


class ConfigError(Exception):
    """The configuration cannot be used.

    ``problems`` holds one line per mistake, each starting with the key it is
    about, so an operator can fix them all in one pass; ``source`` is the file
    (or ``"<config>"``) they were found in.
    """

    def __init__(self, problems: list[str], source: str = "<config>") -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)
        self.source = source


class _WrongType(Exception):
    """The value has the wrong TOML type; the caller decides whether it may be shown."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


class _Invalid(Exception):
    """The value has the right type but is unusable; the message follows ``KEY: ``.

    Checks used on secret fields must not raise this with the value in it.
    """


Check = Callable[[Any], Any]


# --- Checks: each takes the TOML value and returns the value to store. ------


def _integer_value(value: Any) -> int:
    # bool is an int subclass in Python, but `true` for a port is a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _WrongType("an integer")
    return value


def _number_value(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _WrongType("a number")
    if not math.isfinite(value):
        raise _Invalid(f"must be a finite number, got {value!r}")
    return value


def _integer(minimum: int, maximum: int | None = None) -> Check:
    def check(value: Any) -> int:
        number = _integer_value(value)
        if maximum is not None and not minimum <= number <= maximum:
            raise _Invalid(f"must be between {minimum} and {maximum}, got {number!r}")
        if number < minimum:
            raise _Invalid(f"must be at least {minimum}, got {number!r}")
        return number

    return check


def _positive_integer(value: Any) -> int:
    number = _integer_value(value)
    if number <= 0:
        raise _Invalid(f"must be greater than 0, got {number!r}")
    return number


def _positive_number(value: Any) -> int | float:
    number = _number_value(value)
    if number <= 0:
        raise _Invalid(f"must be greater than 0, got {number!r}")
    return number


def _positive_float(value: Any) -> float:
    return float(_positive_number(value))


def _port(value: Any) -> int:
    return _integer(1, 65535)(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _WrongType("a string")
    return value


def _non_empty_string(value: Any) -> str:
    text = _string(value)
    if not text:
        raise _Invalid("must not be empty")
    return text


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _WrongType("a boolean (true or false)")
    return value


def _one_of(choices: Mapping[str, object] | tuple[str, ...], *, upper: bool) -> Check:
    """Case-insensitive choice, stored in the case the choices are written in."""

    def check(value: Any) -> str:
        text = _string(value)
        folded = text.upper() if upper else text.lower()
        if folded not in choices:
            listed = ", ".join(repr(c) if not upper else c for c in choices)
            raise _Invalid(f"must be one of {listed}, got {text!r}")
        return folded

    return check


def _time_zone(value: Any) -> str:
    name = _string(value)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _Invalid(f"unknown time zone {name!r}") from None
    return name


def _octal_mode(value: Any) -> int:
    """Read a file mode written the way chmod takes it.

    A TOML string ("0660", "660", "0o660") is unambiguous.  A bare TOML integer
    such as 660 is decimal to TOML but plainly meant as octal, so its digits
    are read as octal text; one with an 8 or a 9 in it cannot be a mode.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _WrongType('an octal mode string such as "0660"')
    text = str(value)
    match = re.fullmatch(r"(?:0o)?([0-7]+)", text)
    if match is None:
        raise _Invalid(f'expected an octal mode such as "0660", got {value!r}')
    mode = int(match.group(1), 8)
    if mode > 0o777:
        raise _Invalid(f"must be between 0000 and 0777, got {value!r}")
    return mode


def _redis_url(value: Any) -> str:
    # The URL may hold a password: a mistake is described, the URL never shown.
    try:
        parse_url(_non_empty_string(value))
    except ValueError as error:
        raise _Invalid(str(error)) from None
    return value


def _sentinel_nodes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _WrongType('a list of "host:port" strings')
    if not value:
        raise _Invalid('must name at least one Sentinel, e.g. ["127.0.0.1:26379"]')
    for node in value:
        try:
            parse_sentinel(node)
        except ValueError as error:
            raise _Invalid(str(error)) from None
    return tuple(value)


def _site_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _WrongType('a list of site names, or ["*"]')
    if not value:
        raise _Invalid('must name at least one site, or be ["*"] (every site with BTU)')
    if "*" in value and len(value) > 1:
        raise _Invalid('"*" already means every site: write ["*"] alone')
    bad = [v for v in value if v != "*" and (not v or v in (".", "..") or "/" in v or "\0" in v)]
    if bad:
        raise _Invalid(f"{bad[0]!r} is not a site name")
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise _Invalid(f"{repeated[0]!r} is listed twice")
    return tuple(value)


def _readable_file(value: Any) -> str:
    path = _non_empty_string(value)
    if not os.access(path, os.R_OK) or not os.path.isfile(path):
        raise _Invalid(f"cannot read {path}")
    return path


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


def _redis_problems(data: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """One line per contradiction among the keys that name the Redis."""
    ways = [key for key in ("rq_host", "rq_url", "rq_sentinels") if key in data]
    if not ways:
        return ["rq_host: required key is missing"] + (
            [] if "rq_port" in data else ["rq_port: required key is missing"]
        )
    if len(ways) > 1:
        return [f"{ways[1]}: conflicts with {ways[0]}; name the Redis one way only "
                "(rq_host and rq_port, rq_url, or rq_sentinels)"]
    problems = []
    way = ways[0]
    if way == "rq_host" and "rq_port" not in data:
        problems.append("rq_port: required key is missing")
    if way != "rq_host" and "rq_port" in data:
        problems.append(f"rq_port: only used with rq_host, not with {way}")
    if way == "rq_url" and "rq_url" in values:
        in_url = parse_url(values["rq_url"])
        for key, part in (("rq_username", "username"), ("rq_password", "password"),
                          ("rq_database", "database")):
            if key in data and part in in_url:
                problems.append(f"{key}: also given in rq_url; set it in one place only")
    tls = [key for key in ("rq_tls_ca_file", "rq_tls_cert_file", "rq_tls_key_file") if key in data]
    if tls and not str(values.get("rq_url") or "").startswith("rediss:"):
        problems.append(f"{tls[0]}: only used with a rediss:// rq_url")
    elif ("rq_tls_cert_file" in data) != ("rq_tls_key_file" in data):
        problems.append("rq_tls_cert_file: the client certificate needs rq_tls_key_file too "
                        "(set both or neither)")
    sentinel_keys = [key for key in data if key.startswith("rq_sentinel_")]
    if way == "rq_sentinels" and "rq_sentinel_service" not in data:
        problems.append("rq_sentinel_service: required with rq_sentinels (the master's name, "
                        "e.g. \"mymaster\")")
    if way != "rq_sentinels" and sentinel_keys:
        problems.append(f"{sentinel_keys[0]}: only used with rq_sentinels")
    return problems


# Without schedules_file these name the MariaDB the schedules are read from.
_MARIADB_KEYS = ("mysql_user", "mysql_password", "mysql_host", "mysql_database")


def _source_problems(data: Mapping[str, Any]) -> list[str]:
    """The mysql_* keys are required, unless schedules_file is the only source."""
    if "schedules_file" in data and not any(key in data for key in _MARIADB_KEYS):
        return []
    problems = [f"{key}: required key is missing" for key in _MARIADB_KEYS if key not in data]
    if problems and "schedules_file" in data:
        problems = [f"{p} (give every mysql_* key to use MariaDB too, or none to use only "
                    "schedules_file)" for p in problems]
    return problems


def _builder_problems(data: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    if "schedules_file" in data and not any(key in data for key in _MARIADB_KEYS):
        return []  # file schedules always run with the function builder
    builder = values.get("job_builder", "frappe" if "job_builder" not in data else None)
    if builder is None:  # job_builder itself was invalid and is already reported
        return []
    problems = []
    for key in _BUILDER_NEEDS[builder]:
        if key not in data:
            problems.append(f"{key}: required when job_builder = '{builder}'")
        elif values.get(key) == "":
            problems.append(f"{key}: must not be empty when job_builder = '{builder}'")
    return problems


def _unknown_key_warning(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key {key!r} ignored{hint}"


def parse_config(data: dict[str, Any], source: str = "<config>") -> tuple[Config, list[str]]:
    """Check parsed TOML and build a ``Config``, or raise one ``ConfigError`` listing every problem.

    Unknown keys only warn: the Rust daemon ignored them, and a file that
    worked there must keep working here.
    """
    if "frappe_sites" in data:
        return _parse_sites(data, source)
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
    return Config(**values), warnings


# Per site, never shared: bench mode reads them from each site's files.
_PER_SITE_KEYS = ("mysql_database", "webserver_host_header")
# Templates: "{site}" becomes each site's name.
_SITE_TEMPLATES = ("socket_path", "redis_key_prefix")


def _parse_sites(data: dict[str, Any], source: str) -> tuple[Config, list[str]]:
    """``frappe_sites``: each site's Config, derived as bench mode derives it for
    ``frappe_site_name = site``; the returned Config holds the shared settings
    and ``site_configs``.

    With ``["*"]`` the candidates are the bench's site directories (those with a
    ``site_config.json``, as Frappe lists its sites); one that cannot be read is
    skipped, with the reason in ``skipped_sites``.  Whether a site's database has
    the BTU tables is only known when the daemon starts (sites.py).
    """
    problems: list[str] = []
    try:
        names = _site_names(data["frappe_sites"])
    except _WrongType as wrong:
        problem = f"frappe_sites: expected {wrong.expected}, got {data['frappe_sites']!r}"
        raise ConfigError([problem], source) from None
    except _Invalid as invalid:
        raise ConfigError([f"frappe_sites: {invalid}"], source) from None
    every = names == ("*",)
    if "frappe_bench_path" not in data:
        problems.append("frappe_sites: needs frappe_bench_path (the bench whose sites it names)")
    if "frappe_site_name" in data:
        problems.append("frappe_site_name: conflicts with frappe_sites; name every site in "
                        "frappe_sites (or use frappe_site_name alone for one site)")
    if "schedules_file" in data:
        problems.append("schedules_file: not with frappe_sites (each site's schedules come "
                        "from its own database)")
    for key in _PER_SITE_KEYS:
        if key in data:
            problems.append(f"{key}: not with frappe_sites: each site's own is read from "
                            "its site_config.json")
    for key in _SITE_TEMPLATES:
        value = data.get(key)
        needed = key == "redis_key_prefix" or every or len(names) > 1
        if isinstance(value, str) and needed and "{site}" not in value:
            example = ("/run/btu_scheduler/{site}.sock" if key == "socket_path"
                       else "btu_scheduler:{site}:")
            problems.append(f"{key}: must contain {{site}} when frappe_sites serves "
                            f"{'several sites' if key == 'socket_path' else 'sites'} "
                            f"(each site needs its own), e.g. \"{example}\"")
    if problems:
        raise ConfigError(problems, source)
    bench = data["frappe_bench_path"]
    if every:
        if not isinstance(bench, str) or not os.path.isfile(os.path.join(bench, COMMON_CONFIG)):
            raise ConfigError([f"frappe_bench_path: {bench} is not a Frappe bench (no "
                               + COMMON_CONFIG + ")"], source)
        candidates = site_names(bench)
        if not candidates:
            raise ConfigError([f"frappe_sites: the bench {bench} has no site "
                               + "(no sites/<site>/site_config.json)"], source)
    else:
        candidates = list(names)
    shared = {key: value for key, value in data.items() if key != "frappe_sites"}
    configs: dict[str, Config] = {}
    skipped: dict[str, str] = {}
    warnings: list[str] | None = None
    for site in candidates:
        site_data = {**shared, "frappe_site_name": site}
        for key in _SITE_TEMPLATES:
            if isinstance(site_data.get(key), str):
                site_data[key] = site_data[key].replace("{site}", site)
        try:
            config, site_warnings = parse_config(site_data, source)
        except ConfigError as error:
            if every:
                skipped[site] = "; ".join(error.problems)
            else:
                problems += [f"frappe_sites: site {site!r}: {p.removeprefix('frappe_site_name: ')}"
                             for p in error.problems]
            continue
        configs[site] = config
        warnings = site_warnings if warnings is None else warnings
    if not configs and not problems:
        problems += [f"frappe_sites: site {site!r}: {why}" for site, why in skipped.items()]
    problems += _shared_redis_problems(configs)
    if problems:
        raise ConfigError(problems, source)
    first = next(iter(configs.values()))
    parent = replace(
        first,
        frappe_sites=names,
        frappe_site_name=None,
        socket_path=str(data.get("socket_path", first.socket_path)),
        redis_key_prefix=str(data.get("redis_key_prefix", "btu_scheduler:{site}:")),
        mysql_database=None,
        mysql_user=None,
        mysql_password=None,
        webserver_host_header=None,
        site_configs=configs,
        skipped_sites=skipped,
    )
    return parent, warnings or []


def _shared_redis_problems(configs: Mapping[str, Config]) -> list[str]:
    """One daemon, one Redis connection: every site must name the same Redis."""
    from btu_twisted.redis_target import target_of

    seen: dict[Any, str] = {}
    for site, config in configs.items():
        seen.setdefault(target_of(config), site)
    if len(seen) < 2:
        return []
    (first, a), (second, b) = list(seen.items())[:2]
    problem = (f"frappe_sites: sites {a!r} and {b!r} use different Redis servers "
               f"({first.describe()} and {second.describe()}); one daemon has one Redis "
               "connection: run one daemon per Redis")
    return [problem]


def site_config(config: Config, site: str | None) -> Config:
    """The Config of ``site`` (``None``: the only one), or ConfigError naming the choices."""
    if not config.is_multi_site:
        if site is None or site == config.frappe_site_name:
            return config
        serves = config.frappe_site_name or "no named site"
        raise ConfigError([f"--site: this config serves {serves}, not {site!r}"])
    sites = ", ".join(config.site_configs)
    if site is None:
        raise ConfigError(["frappe_sites: this config serves several sites; choose one "
                           + f"with --site ({sites})"])
    if site not in config.site_configs:
        why = config.skipped_sites.get(site)
        raise ConfigError([f"--site: {site!r} is not served by this config"
                           + (f" ({why})" if why else "") + f"; its sites: {sites}"])
    return config.site_configs[site]


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
        raise ConfigError([f"cannot read config file {path}: {error.strerror or error}"], path)
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as error:
        raise ConfigError([f"config file {path} is not UTF-8 (byte {error.start})"], path)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"config file {path}: TOML syntax error: {error}"], path)

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

    loose = permission_warning(path)
    return config, ([loose] if loose else []) + warnings


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

    return LogLevel.levelWithName(_LOG_LEVELS[config.tracing_level])


def permission_warning(path: str | os.PathLike[str]) -> str | None:
    """Warn when other users can read (passwords leak) or write (anyone redirects jobs) the file."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    bits = ((stat.S_IROTH, "readable"), (stat.S_IWOTH, "writable"))
    loose = [word for bit, word in bits if mode & bit]
    if not loose:
        return None
    return (
        f"config file {os.fspath(path)} is {' and '.join(loose)} by other users "
        f"(mode {mode:04o}); it holds passwords"
    )
