"""What every ``btu`` subcommand shares: the run context, exit codes and output.

The CLI is read by two audiences.  People get short aligned tables; scripts
pass ``--json`` and get exactly one JSON document on stdout and nothing else
there.  Errors always go to stderr as one line starting ``btu: `` and end in
an exit code a script can branch on, so no code path may print a traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from btu_twisted.config import Config, ConfigError, load_config, site_config
from btu_twisted.records import ECHO_CHARS, echo

if TYPE_CHECKING:
    # Aliases: inside Context the names ``redis`` and ``mariadb`` are its methods.
    from pymysql.connections import Connection as MariaDBConnection
    from redis import Redis as RedisClient

__all__ = [
    "FAILED",
    "OK",
    "UNREACHABLE",
    "USAGE",
    "CliError",
    "Context",
    "flatten",
    "format_table",
    "one_error_line",
]

#: Exit codes: success; not found / refused / invalid; usage (argparse's); a service unreachable.
OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3

# Deadlines for the synchronous clients: an admin waiting at a prompt should
# learn within seconds that a service is down.
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 15


# A quoted text (as repr quotes it) longer than the echo limit: the opening
# quote starts a word and the closing one ends it, so that the text between two
# short quoted names is not taken for one.
_LONG = ECHO_CHARS + 1
_LONG_QUOTED = re.compile(
    rf"(?<![\w'\"])(?:'([^'\n]{{{_LONG},}})'|\"([^\"\n]{{{_LONG},}})\")(?!\w)")


def one_error_line(message: str) -> str:
    """``message`` on one line, every long quoted text in it shortened.

    The commands quote what the user typed (a schedule name, a job id, a cron
    string, a zone) with :func:`~btu_twisted.records.echo`; argparse, the
    config checks and the cron parser quote it whole, so a 20,000-character
    name came back whole.  This catches those too.
    """
    return _LONG_QUOTED.sub(lambda m: echo(m.group(1) or m.group(2)), " ".join(message.split()))


class CliError(Exception):
    """End the command with one stderr line and ``code``."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = one_error_line(message)
        self.code = code


@dataclass
class Context:
    """Streams, output mode and the lazily loaded configuration of one run.

    The config is read only by commands that need it, so ``next-runs`` and
    ``--help`` work on a machine without the daemon's file.
    """

    out: TextIO
    err: TextIO
    json: bool
    config_path: str
    config_explicit: bool
    #: ``--site``: with a ``frappe_sites`` config, the site the command acts on.
    site: str | None = None
    _config: Config | None = field(default=None, repr=False)
    _file: Config | None = field(default=None, repr=False)

    def config(self) -> Config:
        """The checked config of the site the command acts on (a ``frappe_sites``
        config needs ``--site``); ConfigError propagates to ``main`` (exit 2)."""
        if self._config is None:
            try:
                self._config = site_config(self._file_config(), self.site)
            except ConfigError as error:
                if error.source != "<config>":
                    raise
                raise CliError(error.problems[0], USAGE) from None
        return self._config

    def _file_config(self) -> Config:
        """The file's config as loaded (for ``frappe_sites``: the sites' shared settings)."""
        if self._file is None:
            config, warnings = load_config(self.config_path)
            for warning in warnings:
                self.warn(warning)
            self._file = config
        return self._file

    @property
    def loaded(self) -> Config | None:
        """The config if it was loaded, for naming services in error messages."""
        return self._config

    def optional_config(self) -> Config | None:
        """The config when it can be used, else None (only for commands that work without it).

        An explicitly given file must load.  The default file may be missing or
        unreadable (a developer's machine) without a word; one that exists but
        is broken earns a warning, because the operator would want to know.
        """
        if self.config_explicit:
            return self._settings()
        if not os.access(self.config_path, os.R_OK):
            return None
        try:
            return self._settings()
        except ConfigError as error:
            self.warn(f"ignoring {self.config_path}: {error.problems[0]}")
            return None

    def _settings(self) -> Config:
        """The site's config, or without ``--site`` the sites' shared settings."""
        if self.site is None and self._file_config().is_multi_site:
            return self._file_config()
        return self.config()

    def warn(self, message: str) -> None:
        self.err.write(f"btu: warning: {one_error_line(message)}\n")

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def emit_json(self, value: Any) -> None:
        """Write one JSON document; ``default=str`` covers datetimes and enums."""
        self.out.write(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str) -> None:
        """Print aligned columns, or ``empty`` when there is no row."""
        listed = [list(row) for row in rows]
        if not listed:
            self.line(empty)
            return
        self.out.write(format_table(headers, listed))

    def pairs(self, values: Mapping[str, object]) -> None:
        """Print a two-column key/value table (one setting or field per line)."""
        self.out.write(format_table(("KEY", "VALUE"), [[k, v] for k, v in values.items()]))

    # redis-py and PyMySQL are imported by the commands that use them: most of
    # a short command's time would otherwise go to loading clients it never uses.
    def redis(self) -> RedisClient:
        """A redis-py client for the config's Redis; it connects on first command.

        The same RedisTarget as the daemon's, so ``btu`` reaches the Redis the
        daemon does: TLS, a unix socket, an ACL user or the Sentinels' master.
        """
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from btu_twisted.redis_target import target_of

        target = target_of(self.config())
        options: dict[str, Any] = dict(
            db=target.database,
            username=target.username,
            password=target.password,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=READ_TIMEOUT,
            # redis-py retries a refused connection for seconds by default; a
            # person at a prompt is better served by the answer at once.
            retry=Retry(NoBackoff(), 0),
        )
        if target.kind == "sentinel":
            from redis.sentinel import Sentinel

            # redis-py before 8.2 (pinned: see pyproject) leaves Sentinel unannotated.
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(target.sentinels),
                sentinel_kwargs=dict(
                    username=target.sentinel_username,
                    password=target.sentinel_password,
                    socket_connect_timeout=CONNECT_TIMEOUT,
                    socket_timeout=READ_TIMEOUT,
                ),
            )
            master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
                str(target.service), **options)
            return master
        if target.kind == "unix":
            return redis.Redis(unix_socket_path=target.path, **options)
        if target.tls:
            options.update(
                ssl=True,
                ssl_ca_certs=target.ca_file,
                ssl_certfile=target.cert_file,
                ssl_keyfile=target.key_file,
            )
        # A tcp target always has both (redis_target.parse_url, target_of).
        return redis.Redis(host=target.host or "localhost", port=target.port or 6379, **options)

    def mariadb(self) -> MariaDBConnection:
        """A PyMySQL connection to the site's database (OperationalError: exit 3)."""
        config = self.config()
        if not config.uses_mariadb:
            raise CliError(
                "this command reads the Frappe site's MariaDB, and the config names none "
                "(no mysql_* keys: schedules come from schedules_file only)", USAGE
            )
        load_pymysql()
        import pymysql

        return pymysql.connect(
            host=config.mysql_host,
            port=config.mysql_port,
            user=config.mysql_user,
            password=config.mysql_password or "",
            database=config.mysql_database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            write_timeout=READ_TIMEOUT,
            # PyMySQL tries TLS whenever the server offers it, and builds an
            # SSL context with the system's CA certificates for it (25-30 ms,
            # a sixth of ``btu next-runs``), though it verifies nothing: on
            # the loopback interface there is nothing for TLS to protect.
            ssl_disabled=_is_loopback(config.mysql_host),
        )


def _is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and the loopback addresses (PyMySQL's default host is localhost)."""
    return not host or host in ("localhost", "::1") or host.startswith("127.")


def load_pymysql() -> None:
    """Import PyMySQL without cryptography's OpenSSL bindings, as the daemon does.

    PyMySQL loads them only to encrypt a password with the server's RSA key
    for MySQL 8's ``sha256_password`` and ``caching_sha2_password`` logins,
    which MariaDB never asks for (btu_twisted/daemon/tls.py), and they were
    about 30 ms of ``btu next-runs --config``'s 180 ms on this host.  Such a
    server gets PyMySQL's own "cryptography is required", as the daemon does.
    """
    if "pymysql" in sys.modules or "cryptography.hazmat" in sys.modules:
        return
    sys.modules["cryptography.hazmat"] = None  # type: ignore[assignment]  # ImportError for all of it
    try:
        import pymysql.connections  # noqa: F401  (decides once: no RSA logins)
    finally:
        if sys.modules.get("cryptography.hazmat", False) is None:
            del sys.modules["cryptography.hazmat"]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if value == "":
        return '""'
    if isinstance(value, bool):
        return "yes" if value else "no"
    # One row per line: a newline or tab inside a value would break the columns.
    return " ".join(str(value).split()) if isinstance(value, str) else str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    lines = []
    for row in [list(headers), *cells]:
        padded = [text.ljust(widths[i]) for i, text in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines) + "\n"


def flatten(value: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested mappings as dotted keys (``services.redis.up``), for key/value tables."""
    flat: dict[str, object] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            flat.update(flatten(item, name + "."))
        elif isinstance(item, list | tuple):
            flat[name] = ", ".join(_cell(v) for v in item) if item else "-"
        else:
            flat[name] = item
    return flat
