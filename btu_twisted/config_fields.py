"""The ``Config`` dataclass: every key of ``btu_scheduler.toml``, its check and default.

Apart from reading and checking the file (``config.py``) so that the bench-sites
part (``config_sites.py``) can name the type without importing the reader back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

from btu_twisted.config_checks import (
    _BUILDER_NEEDS,
    Check,
    _boolean,
    _integer,
    _non_empty_string,
    _octal_mode,
    _one_of,
    _port,
    _positive_float,
    _positive_integer,
    _positive_number,
    _readable_file,
    _redis_url,
    _sentinel_nodes,
    _site_names,
    _string,
    _time_zone,
)
from btu_twisted.redis_target import mask_url, parse_url

__all__ = ["Config", "masked", "toml_fields"]

_MASK = "********"

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

# frappe_job_id_style values: which Frappe's create_job_id the frappe_site and frappe ids copy.
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
    # Every MariaDB connection of the daemon, all sites together (db_pool.py).
    mysql_max_connections: int = _key(_positive_integer, 10)
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

    # Schedule health (store/health_record.py): each job followed to its end.
    schedule_health: bool = _key(_boolean, True)
    health_follow_secs: float = _key(_positive_float, 3.0)
    health_failing_warning: int = _key(_positive_integer, 1)
    health_failing_critical: int = _key(_positive_integer, 3)
    health_late_secs: float = _key(_positive_float, 60.0)
    health_stuck_grace_secs: float = _key(_positive_float, 20.0)
    health_metrics_max_schedules: int = _key(_integer(0), 1000)
    health_webhook_url: str | None = _key(_non_empty_string, None, secret=True)

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
