"""Which Redis the daemon and ``btu`` talk to, however the config names it.

The config offers three ways to name the Redis (``rq_host``/``rq_port``, an
``rq_url``, or Sentinel with ``rq_sentinels``); the daemon's txredisapi pool
and the CLI's redis-py client both connect from one :class:`RedisTarget`, so
the two cannot read the keys differently.  Nothing here imports a client or
Twisted: ``btu print-config`` and the config checks use it too.

Secrets (the password, the Sentinel password, a password inside ``rq_url``)
are kept out of every text this module builds: :meth:`RedisTarget.describe`,
the ``repr`` and the errors of :func:`parse_url`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

__all__ = ["ACL_RULE", "RedisTarget", "mask_url", "parse_sentinel", "parse_url", "target_of"]

#: The ACL rule the daemon's Redis user needs (README "Redis users"), ``{prefix}``
#: being its redis_key_prefix: its own keys, RQ's, Lua scripts, and ROLE
#: (txredisapi asks it of every master it reaches through Sentinel).
ACL_RULE = "~{prefix}* ~rq:* +@all -@dangerous +role"

_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisTarget:
    """One Redis server, or the master of a Sentinel service; ``kind`` says which."""

    kind: str  # "tcp", "unix" or "sentinel"
    host: str | None = None
    port: int | None = None
    path: str | None = None
    database: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """Where it is, for log lines and errors: never a secret."""
        user = f"{self.username}@" if self.username else ""
        if self.kind == "unix":
            return f"unix://{user}{self.path}?db={self.database}"
        if self.kind == "sentinel":
            nodes = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"Sentinel service {self.service!r} via {nodes} (db {self.database})"
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{user}{self.host}:{self.port}/{self.database}"


def mask_url(url: str) -> str:
    """``url`` with the password (if any) replaced by ``********``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:********@{host}"))
    except ValueError:
        return "(not a URL; not shown)"


def parse_url(url: str) -> dict[str, Any]:
    """``rq_url`` as RedisTarget fields; ValueError names the mistake, never the password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ValueError(f"not a Redis URL ({error})") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"scheme {parts.scheme or 'missing'!r}: expected redis://, rediss:// or unix://"
        )
    found: dict[str, Any] = {}
    if parts.username not in (None, ""):
        found["username"] = unquote(parts.username or "")
    if parts.password not in (None, ""):
        found["password"] = unquote(parts.password or "")
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        raise ValueError(f"unknown URL parameter(s) {', '.join(unknown)}")
    database = query.get("db", [None])[-1]
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs the socket's path, e.g. unix:///run/redis.sock?db=0")
        found.update(kind="unix", path=unquote(parts.path))
    else:
        if not parts.hostname:
            raise ValueError(f"{parts.scheme}:// needs a host name")
        found.update(kind="tcp", host=parts.hostname, port=port or 6379,
                     tls=parts.scheme == "rediss")
        path = parts.path.strip("/")
        if path and database is not None:
            raise ValueError("the database is given twice (path and ?db=)")
        database = path or database
    if database is not None:
        if not database.isdigit():
            raise ValueError(f"database {database!r} is not a number")
        found["database"] = int(database)
    return found


def parse_sentinel(node: str) -> tuple[str, int]:
    """``"host:port"`` (IPv6 as ``[::1]:26379``) as a pair; ValueError otherwise."""
    host, sep, port = node.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{node!r} is not host:port")
    return host, int(port)


def target_of(config: Any) -> RedisTarget:
    """The Redis a checked config names (config.py has ruled out conflicting keys)."""
    common: dict[str, Any] = dict(
        database=config.rq_database,
        username=config.rq_username,
        password=config.rq_password,
    )
    if config.rq_sentinels:
        return RedisTarget(
            kind="sentinel",
            sentinels=tuple(parse_sentinel(n) for n in config.rq_sentinels),
            service=config.rq_sentinel_service,
            sentinel_username=config.rq_sentinel_username,
            sentinel_password=config.rq_sentinel_password,
            **common,
        )
    if config.rq_url:
        # Values in the URL win; config.py refuses the same value set in both places.
        common.update(parse_url(config.rq_url))
        return RedisTarget(
            ca_file=config.rq_tls_ca_file,
            cert_file=config.rq_tls_cert_file,
            key_file=config.rq_tls_key_file,
            **common,
        )
    return RedisTarget(kind="tcp", host=config.rq_host, port=config.rq_port, **common)
