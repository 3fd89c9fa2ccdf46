"""Every MariaDB connection of the daemon: a few worker threads and a bounded cache.

A bench of 200 sites with a pool per site held 200 connections and MariaDB
(``max_connections`` 151) refused Frappe itself.  Here the whole daemon has
``bound`` worker threads and at most ``bound`` open connections, whatever the
number of sites: a worker takes an idle connection of its site (same connect
parameters: per-site credentials as before), or opens one, closing the least
recently used idle connection of another site when the bound is reached.  A
worker holds one connection at a time and there are no more workers than the
bound, so a worker in need always finds one to reuse or to close.

Idle connections are closed after ``idle_secs``: a connection not needed is
not held.  One site may have only ``per_site`` queries in flight, and one
while its database fails; the rest wait in its own queue on the reactor
thread, so a site whose database hangs (until its connect/read timeouts)
holds one worker, never all of them.

A connection that dies (MariaDB restarted, network cut) is dropped quietly,
without adbapi's "Rollback failed" tracebacks: the caller gets the error and
the site's ``Dependency`` logs one outage line.  A connection that died while
idle in the cache is not the caller's problem: the query is tried once more on
a fresh one (every statement of ours is a read or an idempotent write).
"""

from __future__ import annotations

import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pymysql
from pymysql import _auth
from pymysql.constants import CLIENT, COMMAND
from pymysql.protocol import OKPacketWrapper
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

__all__ = ["DbPool", "is_connection_error", "site_limit"]

#: Connections unused this long are closed.
IDLE_SECS = 30.0

#: What identifies a site's connections: its connect parameters, sorted.
Key = tuple[tuple[str, Any], ...]
Work = Callable[..., Any]

# pymysql 2 builds a fresh SSL context for each connection in its "preferred"
# TLS mode, loading the system's CA store each time: 25 ms of CPU per
# connect, where the connect itself takes 0.4.  One context serves them all.
_PREFERRED_TLS: list[ssl.SSLContext] = []


class _Connection(pymysql.connections.Connection):
    def _create_ssl_ctx(self, sslp: Any) -> Any:
        if sslp:
            return super()._create_ssl_ctx(sslp)  # type: ignore[misc]  # not in pymysql's stubs
        if not _PREFERRED_TLS:
            _PREFERRED_TLS.append(super()._create_ssl_ctx({}))  # type: ignore[misc]  # as above
        return _PREFERRED_TLS[0]

    def set_character_set(self, charset: str, collation: str | None = None) -> None:
        if charset == self.charset and not collation:
            # The handshake already named utf8mb4 (MariaDB takes the connection's
            # character set from it): pymysql's SET NAMES would be one more
            # statement per connect, and a bench's sites connect at each look.
            self.encoding = pymysql.charset.charset_by_name(charset).encoding
            return
        super().set_character_set(charset, collation)

    def change_user(self, user: str, password: str, database: str) -> None:
        """Become another site's connection (MariaDB's COM_CHANGE_USER, which pymysql
        has no call for): the same checks as a connect, without a new TCP connection
        and server thread, and the session reset as after a connect.  A bench's 500
        sites share 10 connections, so nearly every look needs another site's; this
        halves what each costs the daemon (0.41 -> 0.20 ms of CPU measured here).
        Raises if MariaDB refuses; the connection must then be closed."""
        raw: Any = self  # pymysql's protocol calls used here are not in its stubs
        name, secret, db = (v.encode(self.encoding) for v in (user, password, database))
        data = name + b"\0"
        reply = _auth.scramble_native_password(secret, raw.salt)
        data += struct.pack("B", len(reply)) + reply + db + b"\0"
        charset: Any = pymysql.charset.charset_by_name(raw.charset)
        data += struct.pack("<H", charset.id)
        if raw.server_capabilities & CLIENT.PLUGIN_AUTH:
            data += b"mysql_native_password\0"
        if raw.server_capabilities & CLIENT.CONNECT_ATTRS:
            data += b"\0"  # no connection attributes (MariaDB refuses the packet without)
        raw._execute_command(COMMAND.COM_CHANGE_USER, data)
        packet = raw._read_packet()  # an error packet raises (a wrong password...)
        if packet.is_auth_switch_request():
            # MariaDB answers with a new salt rather than reuse the handshake's.
            packet.read_uint8()
            plugin = packet.read_string()
            if plugin != b"mysql_native_password":
                raise pymysql.err.OperationalError(2059, f"no switch with {plugin!r}")
            raw.salt = packet.read_all().rstrip(b"\0")
            raw.write_packet(_auth.scramble_native_password(secret, raw.salt))
            packet = raw._read_packet()
        if not packet.is_ok_packet():
            raise pymysql.err.OperationalError(2027, "unexpected answer to COM_CHANGE_USER")
        raw.server_status = OKPacketWrapper(packet).server_status
        raw.user, raw.password, raw.db = name, secret, db
        if raw.autocommit_mode is not None:
            raw.autocommit(raw.autocommit_mode)  # the switch set the server's default


def _connect(**kwargs: Any) -> Any:
    return _Connection(**kwargs)


def is_connection_error(error: BaseException) -> bool:
    """The connection is unusable (not just this statement)."""
    if isinstance(error, pymysql.err.OperationalError):
        return True
    return isinstance(error, pymysql.err.InterfaceError | OSError | ConnectionError)


def site_limit(bound: int) -> int:
    """Queries one site may have in flight on a pool shared by many sites."""
    return max(1, min(3, bound // 3))


def _key_of(connect: Mapping[str, Any]) -> Key:
    return tuple(sorted(connect.items()))


#: The connect parameters a connection may switch (the rest must be the same).
_WHO = ("user", "password", "database")


def _switch(conn: Any, key: Key, connect: Mapping[str, Any]) -> bool:
    """Switch another site's idle connection to ``connect``'s site, when only the
    credentials differ; False if it cannot (then it is closed and a new one made)."""
    change = getattr(conn, "change_user", None)
    if change is None or [kv for kv in key if kv[0] not in _WHO] != [
            kv for kv in _key_of(connect) if kv[0] not in _WHO]:
        return False
    try:
        change(*(str(connect.get(k, "")) for k in _WHO))
    except Exception:
        return False
    return True


@dataclass
class _Site:
    running: int = 0
    waiting: deque[tuple[Mapping[str, Any], Work, tuple[Any, ...], Deferred[Any]]] = field(
        default_factory=deque)


class DbPool:
    """The worker threads and the connection cache (see the module's docstring)."""

    def __init__(
        self,
        reactor: Any,
        bound: int = 10,
        *,
        per_site: int | None = None,
        idle_secs: float = IDLE_SECS,
        connect: Callable[..., Any] = _connect,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if bound < 1:
            raise ValueError("a pool needs at least one connection")
        self.bound = bound
        self.per_site = bound if per_site is None else max(1, min(per_site, bound))
        self.idle_secs = idle_secs
        self._reactor = reactor
        self._connect = connect
        self._now = now
        self._lock = threading.Condition()
        #: Connections open (idle or in use), counted before they are opened.
        self.open = 0
        #: Most connections open at once since the start (for tests and benchmarks).
        self.peak = 0
        #: Idle connections, least recently used first: (key, connection, idle since).
        self._idle: list[tuple[Key, Any, float]] = []
        self._sites: dict[Key, _Site] = {}
        #: Sites whose last query failed for want of a connection.
        self._failing: set[Key] = set()
        self._threads: ThreadPool | None = None
        self._reaper = LoopingCall(self._reap)
        self._reaper.clock = reactor

    @property
    def running(self) -> bool:
        return self._threads is not None

    def start(self) -> None:
        if self._threads is not None:
            return
        self._threads = ThreadPool(0, self.bound, name="btu-mariadb")
        self._threads.start()
        self._reaper.start(max(1.0, self.idle_secs / 2), now=False)

    def stop(self) -> None:
        """Close the idle connections and stop the threads (waiting for queries
        under way: their own timeouts bound that)."""
        threads, self._threads = self._threads, None
        if self._reaper.running:
            self._reaper.stop()
        for site in self._sites.values():
            while site.waiting:
                site.waiting.popleft()[3].errback(RuntimeError("MariaDB pool stopped"))
        if threads is not None:
            # After the join: a worker still in a query hands its connection back
            # first, so no connection is left open behind the close.
            threads.stop()
            self._close_idle(None)

    def run(self, connect: Mapping[str, Any], work: Work, *args: Any) -> Deferred[Any]:
        """``work(cursor, *args)`` on a connection made with ``connect`` (pymysql's
        keyword arguments), in a worker thread; fires with its result."""
        if self._threads is None:
            raise RuntimeError("MariaDB pool used before start()")
        key = _key_of(connect)
        site = self._sites.setdefault(key, _Site())
        entry: tuple[Mapping[str, Any], Work, tuple[Any, ...], Deferred[Any]]

        def cancel(_: Deferred[Any]) -> None:
            if entry in site.waiting:
                site.waiting.remove(entry)

        d: Deferred[Any] = Deferred(cancel)
        entry = (connect, work, args, d)
        site.waiting.append(entry)
        self._next(key, site)
        return d

    def forget(self, connect: Mapping[str, Any]) -> Deferred[None]:
        """Close the idle connections of a site no longer served."""
        key = _key_of(connect)
        self._failing.discard(key)
        if self._threads is None:
            return succeed(None)
        return deferToThreadPool(self._reactor, self._threads, self._close_idle, key)

    # -- reactor thread -------------------------------------------------------
    def _next(self, key: Key, site: _Site) -> None:
        # A site whose database just failed (down, hanging) gets one worker only.
        limit = 1 if key in self._failing else self.per_site
        while site.running < limit and site.waiting and self._threads is not None:
            connect, work, args, d = site.waiting.popleft()
            site.running += 1
            done = deferToThreadPool(
                self._reactor, self._threads, self._work, key, connect, work, args)
            done.addBoth(self._finished, key, site, d)
        if not site.running and not site.waiting:
            self._sites.pop(key, None)

    def _finished(self, result: Any, key: Key, site: _Site, d: Deferred[Any]) -> None:
        site.running -= 1
        error = result.value if isinstance(result, Failure) else None
        if not isinstance(result, Failure):
            self._failing.discard(key)
        elif isinstance(error, BaseException) and is_connection_error(error):
            self._failing.add(key)
        self._next(key, site)
        if d.called:
            return  # cancelled (a start-up probe's timeout): nobody waits for it
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)

    def close_idle(self) -> Deferred[None]:
        """Close the connections idle for ``idle_secs`` or more (every ``idle_secs / 2``
        by itself); fires once they are closed."""
        if self._threads is None:
            return succeed(None)
        return deferToThreadPool(self._reactor, self._threads, self._close_idle, None,
                                 self._now() - self.idle_secs)

    def _reap(self) -> None:
        self.close_idle().addErrback(lambda _: None)  # closing never fails (_close)

    # -- worker threads -------------------------------------------------------
    def _work(self, key: Key, connect: Mapping[str, Any], work: Work, args: tuple[Any, ...]) -> Any:
        conn, reused = self._take(key, connect)
        try:
            return self._use(key, conn, work, args)
        except Exception as e:
            if not (reused and is_connection_error(e)):
                raise
        # It died while idle (MariaDB restarted, wait_timeout): once more, fresh.
        conn, _ = self._take(key, connect, fresh=True)
        return self._use(key, conn, work, args)

    def _use(self, key: Key, conn: Any, work: Work, args: tuple[Any, ...]) -> Any:
        try:
            cursor = conn.cursor()
            try:
                result = work(cursor, *args)
            finally:
                cursor.close()
        except Exception as e:
            if is_connection_error(e):
                self._drop(conn)
            else:
                self._give_back(key, conn)
            raise
        self._give_back(key, conn)
        return result

    def _take(self, key: Key, connect: Mapping[str, Any], fresh: bool = False) -> tuple[Any, bool]:
        """An idle connection of ``key`` (True), or a new one (False)."""
        victim = None
        with self._lock:
            while True:
                if not fresh:
                    for i in range(len(self._idle) - 1, -1, -1):
                        if self._idle[i][0] == key:
                            return self._idle.pop(i)[1], True
                if self.open < self.bound:
                    self.open += 1
                    self.peak = max(self.peak, self.open)
                    break
                if self._idle:
                    # The least recently used idle one (another site's, or a stale one of ours).
                    victim_key, victim, _ = self._idle.pop(0)
                    break
                self._lock.wait()  # only when more workers than the bound: never by default
        if victim is not None:
            if not fresh and _switch(victim, victim_key, connect):
                return victim, False
            _close(victim)
        try:
            return self._connect(**connect), False
        except BaseException:
            with self._lock:
                self.open -= 1
                self._lock.notify()
            raise

    def _give_back(self, key: Key, conn: Any) -> None:
        with self._lock:
            self._idle.append((key, conn, self._now()))
            self._lock.notify()

    def _drop(self, conn: Any) -> None:
        _close(conn)
        with self._lock:
            self.open -= 1
            self._lock.notify()

    def _close_idle(self, key: Key | None, before: float | None = None) -> None:
        """Close the idle connections of ``key`` (None: of every site) idle since before ``before``."""
        with self._lock:
            keep = [entry for entry in self._idle if not (
                (key is None or entry[0] == key) and (before is None or entry[2] <= before))]
            closing = [entry[1] for entry in self._idle if entry not in keep]
            self._idle = keep
        # Counted as open until closed, so no worker opens a new one while these still are.
        for conn in closing:
            _close(conn)
        if closing:
            with self._lock:
                self.open -= len(closing)
                self._lock.notify_all()


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass  # already closed by the driver, or the server went away
