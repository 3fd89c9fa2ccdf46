"""Fill the settings a Frappe bench already knows (bench mode).

An admin who names the bench and the site should not copy a dozen values
from the bench's JSON files into the TOML by hand, nor copy them again when
``bench`` rotates a password.  The keys are read the way Frappe reads them
(COMPAT.md 8.6): ``sites/common_site_config.json``, overridden by
``sites/<site>/site_config.json``.  Whatever the TOML sets wins; this module
only proposes values, each with the file and key it came from, so
``btu print-config`` can say where a setting came from.

Nothing here connects to anything.  A ``redis_queue`` reached through
Sentinel, TLS (``rediss://``), a unix socket or an ACL user maps to the
``rq_*`` keys for them; only ``use_rq_auth`` stays a problem until the TOML
names a Redis user: Frappe's RQ user may touch ``rq:*`` keys only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from btu_twisted.redis_target import ACL_RULE

__all__ = ["COMMON_CONFIG", "FILLS", "BenchDefaults", "bench_defaults", "bench_id", "site_names"]

COMMON_CONFIG = os.path.join("sites", "common_site_config.json")

# What bench mode sets when neither the bench nor the TOML says: the BTU
# Configuration's cron_time_zone is what schedules are read in, the zone here
# is only its fallback; the frappe_site builder runs jobs through Frappe's own
# execute_job and needs no API token.
_FIXED = {
    "full_refresh_internal_secs": 3600,
    "scheduler_polling_interval": 60,
    "time_zone_string": "UTC",
    "job_builder": "frappe_site",
    "webserver_ip": "127.0.0.1",
}

# Every key bench mode can fill: when the bench cannot be read, their absence
# from the TOML is a consequence, not a mistake of its own to report.
FILLS = frozenset({
    *_FIXED, "mysql_database", "mysql_user", "mysql_password", "mysql_host", "mysql_port",
    "rq_host", "rq_port", "rq_database", "rq_password", "rq_queue_prefix", "redis_key_prefix",
    "rq_url", "rq_username", "rq_sentinels", "rq_sentinel_service", "rq_sentinel_username",
    "rq_sentinel_password",
    "webserver_port", "webserver_host_header", "result_ttl", "failure_ttl",
})


@dataclass
class BenchDefaults:
    """Proposed values, where each came from, and what stops bench mode."""

    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def propose(self, key: str, value: Any, source: str) -> None:
        self.values[key] = value
        self.sources[key] = source


def bench_id(bench_path: str, common: Mapping[str, Any]) -> str:
    """Frappe's ``get_bench_id``: the configured id, else the real path with ``/`` as ``-``."""
    configured = common.get("bench_id")
    if isinstance(configured, str) and configured:
        return configured
    return os.path.realpath(bench_path).strip("/").replace("/", "-")


def site_names(bench_path: str) -> list[str]:
    """The bench's sites as Frappe lists them: directories of ``sites/`` with a
    ``site_config.json``, in name order."""
    sites = os.path.join(bench_path, "sites")
    try:
        entries = os.listdir(sites)
    except OSError:
        return []
    return sorted(name for name in entries
                  if os.path.isfile(os.path.join(sites, name, "site_config.json")))


def bench_defaults(bench_path: str, site: str | None, toml: Mapping[str, Any]) -> BenchDefaults:
    """Read the bench at ``bench_path`` for ``site``; ``toml`` is what the file sets."""
    found = BenchDefaults()
    for key, value in _FIXED.items():
        found.propose(key, value, "bench mode default")
    if not isinstance(bench_path, str) or not bench_path:
        found.problems.append("frappe_bench_path: expected the bench directory, a non-empty string")
        return found
    if not isinstance(site, str) or not site:
        found.problems.append("frappe_site_name: required when frappe_bench_path is set")
        return found
    if site in (".", "..") or "/" in site or "\0" in site:
        found.problems.append(f"frappe_site_name: {site!r} is not a site name")
        return found
    common_path = os.path.join(bench_path, COMMON_CONFIG)
    if not os.path.isfile(common_path):
        found.problems.append(
            f"frappe_bench_path: {bench_path} is not a Frappe bench (no {COMMON_CONFIG})"
        )
        return found
    site_file = os.path.join("sites", site, "site_config.json")
    if not os.path.isfile(os.path.join(bench_path, site_file)):
        found.problems.append(
            f"frappe_site_name: the bench {bench_path} has no site {site!r} (no {site_file})"
        )
        return found
    common = _read_json(bench_path, COMMON_CONFIG, found)
    own = _read_json(bench_path, site_file, found)
    if common is None or own is None:
        return found

    def lookup(key: str) -> tuple[Any, str] | None:
        """The site's value, else the bench's, as Frappe's get_site_config merges them."""
        for data, name in ((own, site_file), (common, COMMON_CONFIG)):
            if data.get(key) not in (None, ""):
                return data[key], f"{name} {key}"
        return None

    _database(found, lookup, site_file)
    _redis(found, lookup, toml)
    the_id = bench_id(bench_path, common)
    found.propose(
        "rq_queue_prefix", the_id + ":",
        f"{COMMON_CONFIG} bench_id" if "bench_id" in common else "bench path (Frappe's bench id)",
    )
    port = lookup("webserver_port")
    found.propose("webserver_port", *(port or (8000, "Frappe's default webserver_port")))
    found.propose("webserver_host_header", site, "frappe_site_name (Frappe picks the site by Host)")
    # The bench's sites share redis_queue and their schedule names: one prefix each.
    found.propose("redis_key_prefix", f"btu_scheduler:{site}:", "frappe_site_name (one per site)")
    ttls = (("result_ttl", "rq_results_ttl"), ("failure_ttl", "rq_job_failure_ttl"))
    for key, frappe_key in ttls:
        ttl = lookup(frappe_key)
        if ttl is not None:
            found.propose(key, *ttl)
    return found


def _read_json(bench_path: str, name: str, found: BenchDefaults) -> dict[str, Any] | None:
    try:
        with open(os.path.join(bench_path, name), encoding="utf-8") as stream:
            data = json.load(stream)
    except OSError as error:
        found.problems.append(f"frappe_bench_path: cannot read {name}: {error.strerror or error}")
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        found.problems.append(f"frappe_bench_path: {name} is not valid JSON: {error}")
        return None
    if not isinstance(data, dict):
        kind = type(data).__name__
        found.problems.append(f"frappe_bench_path: {name} holds a {kind}, not an object")
        return None
    return data


def _database(found: BenchDefaults, lookup: Any, site_file: str) -> None:
    db_type = lookup("db_type")
    if db_type is not None and db_type[0] != "mariadb":
        value, source = db_type
        found.problems.append(f"frappe_bench_path: {source} is {value!r}; BTU needs MariaDB")
        return
    name = lookup("db_name")
    if name is None:
        found.problems.append(f"frappe_bench_path: {site_file} has no db_name")
        return
    found.propose("mysql_database", *name)
    user = lookup("db_user")
    default_user = (name[0], f"{site_file} db_name (Frappe's default db_user)")
    found.propose("mysql_user", *(user or default_user))
    password = lookup("db_password")
    if password is not None:
        found.propose("mysql_password", *password)
    host = lookup("db_host")
    found.propose("mysql_host", *(host or ("localhost", "Frappe's default db_host")))
    port = lookup("db_port")
    found.propose("mysql_port", *(port or (3306, "Frappe's default db_port")))


# The TOML keys that name a Redis: with any of them, the bench's redis_queue does not apply.
_OWN_REDIS = ("rq_host", "rq_url", "rq_sentinels")

# Frappe's Sentinel keys (frappe.utils.redis_wrapper) and the keys they become.
_SENTINEL_KEYS = (
    ("redis_queue_master_service", "rq_sentinel_service"),
    ("redis_queue_sentinel_username", "rq_sentinel_username"),
    ("redis_queue_sentinel_password", "rq_sentinel_password"),
    ("redis_queue_master_username", "rq_username"),
    ("redis_queue_master_password", "rq_password"),
)


def _redis(found: BenchDefaults, lookup: Any, toml: Mapping[str, Any]) -> None:
    """``redis_queue`` (or Frappe's Sentinel keys) as the daemon's rq_* keys."""
    if any(key in toml for key in _OWN_REDIS):
        return  # the TOML names its own Redis: nothing of the bench's applies
    sentinel = lookup("redis_queue_sentinel_enabled")
    if sentinel is not None and sentinel[0]:
        _sentinel(found, lookup)
    else:
        _redis_url(found, lookup)
    rq_auth = lookup("use_rq_auth")
    if rq_auth is not None and rq_auth[0] and not {"rq_username", "rq_password"} & set(toml):
        found.problems.append(
            "rq_username: the bench uses use_rq_auth, and its RQ user may touch only rq:* "
            "keys, not the btu_scheduler:* keys; set rq_username and rq_password to a Redis "
            f"user with the ACL rule '{ACL_RULE.format(prefix='btu_scheduler:')}' "
            "(or rq_password to the default user's)"
        )


def _sentinel(found: BenchDefaults, lookup: Any) -> None:
    nodes = lookup("redis_queue_sentinels")
    if nodes is None:
        found.problems.append(
            "frappe_bench_path: redis_queue_sentinel_enabled is set but "
            f"{COMMON_CONFIG} has no redis_queue_sentinels"
        )
        return
    found.propose("rq_sentinels", *nodes)
    for frappe_key, key in _SENTINEL_KEYS:
        value = lookup(frappe_key)
        if value is not None:
            found.propose(key, *value)


def _redis_url(found: BenchDefaults, lookup: Any) -> None:
    queue = lookup("redis_queue")
    if queue is None:
        found.problems.append(f"frappe_bench_path: {COMMON_CONFIG} has no redis_queue")
        return
    url, source = queue
    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError as error:
        found.problems.append(f"frappe_bench_path: redis_queue is not a URL ({error})")
        return
    if parts.scheme != "redis" or parts.query:
        # rediss://, unix://, or what config.py will name the problem of: as it is.
        found.propose("rq_url", str(url), source)
        return
    if not parts.hostname:
        found.problems.append("frappe_bench_path: redis_queue names no host")
        return
    found.propose("rq_host", parts.hostname, source)
    found.propose("rq_port", port or 6379, source)
    database = parts.path.strip("/")
    if database:
        if not database.isdigit():
            found.problems.append(
                f"frappe_bench_path: redis_queue database {database!r} is not a number"
            )
            return
        found.propose("rq_database", int(database), source)
    if parts.username not in (None, "", "default"):
        found.propose("rq_username", unquote(parts.username or ""), f"{source} (user)")
    if parts.password:
        found.propose("rq_password", unquote(parts.password), f"{source} (password)")
