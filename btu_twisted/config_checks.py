"""The checks behind ``btu_scheduler.toml``'s keys, and the cross-key rules.

Kept apart from :mod:`btu_twisted.config` so the Config table reads as a list
of keys, and so the bench-sites parser can raise the same errors without
importing the whole loader.  Each check takes the TOML value and returns the
value to store; a secret's check never puts the value in its message.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from btu_twisted.redis_target import parse_sentinel, parse_url

# Keys each job builder cannot work without, beyond the always-required ones.
_BUILDER_NEEDS = {
    "frappe": ("webserver_ip", "webserver_port", "webserver_token"),
    "frappe_site": ("frappe_site_name",),
    "function": (),
}


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
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _WrongType("an integer")


def _number_value(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _WrongType("a number")
    number: int | float = value
    if not math.isfinite(number):
        raise _Invalid(f"must be a finite number, got {number!r}")
    return number


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
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
    if isinstance(value, bool) or not isinstance(value, int | str):
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
    url = _non_empty_string(value)
    try:
        parse_url(url)
    except ValueError as error:
        raise _Invalid(str(error)) from None
    return url


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


def _health_problems(values: Mapping[str, Any]) -> list[str]:
    """Schedule health's two failure counts must be in order."""
    warning = values.get("health_failing_warning", 1)
    critical = values.get("health_failing_critical", 3)
    if critical < warning:
        return [f"health_failing_critical: {critical} is below health_failing_warning "
                f"({warning}): a schedule would be critical before it is a warning"]
    return []
