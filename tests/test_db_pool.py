"""The daemon's MariaDB connections (sources/db_pool.py): a bound whatever the number of
sites, reuse and eviction, idle close, dead connections dropped, a slow site alone.

Real worker threads and the real reactor; the connections are fakes that count
how many are open at once, so the bound is checked where it matters: under
concurrent demand.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from btu_twisted.sources.db_pool import DbPool, site_limit


class FakeConnection:
    def __init__(self, server: FakeServer, site: str) -> None:
        self.server = server
        self.site = site
        self.closed = False
        self.dead = False

    def cursor(self) -> FakeCursor:
        if self.closed:
            raise pymysql.err.InterfaceError(0, "closed")
        return FakeCursor(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with self.server.lock:
                self.server.open -= 1


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.site = conn.site
        self.dead = conn.dead

    def close(self) -> None:
        pass


class FakeServer:
    """Counts connections open at once, as MariaDB's processlist would."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.made: list[FakeConnection] = []
        self.refuse: set[str] = set()

    def connect(self, **kwargs: Any) -> FakeConnection:
        site = kwargs["database"]
        if site in self.refuse:
            raise pymysql.err.OperationalError(2003, f"Can't connect ({site})")
        conn = FakeConnection(self, site)
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
            self.made.append(conn)
        return conn

    def of(self, site: str) -> list[FakeConnection]:
        return [c for c in self.made if c.site == site]


def site(name: str) -> dict[str, Any]:
    return {"host": "db", "user": f"u_{name}", "password": "p", "database": name}


def which_site(cursor: FakeCursor, pause: float = 0.0) -> str:
    if cursor.dead:
        raise pymysql.err.OperationalError(2013, "Lost connection to server during query")
    if pause:
        time.sleep(pause)  # a query taking a while, in the worker thread
    return cursor.site


class PoolCase(unittest.TestCase):
    def pool(self, bound: int, **kwargs: Any) -> DbPool:
        self.server = FakeServer()
        pool = DbPool(reactor, bound, connect=self.server.connect, **kwargs)
        pool.start()
        self.addCleanup(pool.stop)
        return pool


class BoundTests(PoolCase):
    async def test_bound_holds_under_concurrent_demand_from_many_sites(self) -> None:
        """60 sites asking 4 queries each at once: never more than 5 connections
        open, every answer from its own site's connection."""
        pool = self.pool(5, per_site=2)
        names = [f"site{i}" for i in range(60)]
        calls = [pool.run(site(n), which_site, 0.002) for n in names for _ in range(4)]
        results = await DeferredList(calls, fireOnOneErrback=True)
        self.assertEqual([r for _, r in results], [n for n in names for _ in range(4)])
        self.assertLessEqual(self.server.peak, 5)
        self.assertLessEqual(pool.peak, 5)
        self.assertEqual(pool.open, self.server.open)
        self.assertLessEqual(pool.open, 5)

    async def test_a_sites_idle_connection_is_reused(self) -> None:
        pool = self.pool(3)
        for _ in range(5):
            self.assertEqual(await pool.run(site("a"), which_site), "a")
        self.assertEqual(len(self.server.of("a")), 1)
        self.assertEqual(pool.open, 1)

    async def test_least_recently_used_idle_connection_is_evicted_at_the_bound(self) -> None:
        pool = self.pool(2)
        await pool.run(site("a"), which_site)
        await pool.run(site("b"), which_site)
        await pool.run(site("a"), which_site)  # b is now the least recently used
        await pool.run(site("c"), which_site)
        (b,) = self.server.of("b")
        self.assertTrue(b.closed)
        self.assertEqual([c.closed for c in self.server.of("a")], [False])
        self.assertEqual(self.server.open, 2)

    async def test_idle_connections_are_closed(self) -> None:
        now = [100.0]
        pool = self.pool(4, idle_secs=30.0, now=lambda: now[0])
        await pool.run(site("a"), which_site)
        now[0] += 20
        await pool.run(site("b"), which_site)
        now[0] += 15  # a idle 35 s, b 15 s
        await pool.close_idle()
        self.assertEqual([c.closed for c in self.server.of("a")], [True])
        self.assertEqual([c.closed for c in self.server.of("b")], [False])
        self.assertEqual(pool.open, 1)

    async def test_stop_closes_every_idle_connection(self) -> None:
        pool = self.pool(4)
        await DeferredList([pool.run(site(n), which_site) for n in "abc"])
        pool.stop()
        self.assertEqual(self.server.open, 0)
        self.assertRaises(RuntimeError, pool.run, site("a"), which_site)

    async def test_forget_closes_one_sites_idle_connections(self) -> None:
        pool = self.pool(4)
        await DeferredList([pool.run(site(n), which_site) for n in "ab"])
        await pool.forget(site("a"))
        self.assertEqual([c.closed for c in self.server.of("a")], [True])
        self.assertEqual([c.closed for c in self.server.of("b")], [False])

    def test_site_limit_is_small_and_at_least_one(self) -> None:
        self.assertEqual([site_limit(b) for b in (1, 3, 6, 10, 20)], [1, 1, 2, 3, 3])


class FailureTests(PoolCase):
    async def test_a_connection_that_dies_in_a_query_is_dropped(self) -> None:
        """A fresh connection failing is the caller's error, and is closed and not kept."""
        pool = self.pool(3)
        original = self.server.connect

        def dead_on_arrival(**kwargs: Any) -> FakeConnection:
            conn = original(**kwargs)
            conn.dead = True
            return conn

        self.server.connect = dead_on_arrival  # type: ignore[method-assign]
        pool._connect = dead_on_arrival
        with self.assertRaises(pymysql.err.OperationalError):
            await pool.run(site("a"), which_site)
        self.assertEqual(pool.open, 0)
        self.assertEqual([c.closed for c in self.server.of("a")], [True])

    async def test_an_idle_connection_that_died_is_replaced_quietly(self) -> None:
        """MariaDB restarted while the connection sat idle: the query runs on a new one."""
        pool = self.pool(3)
        await pool.run(site("a"), which_site)
        (old,) = self.server.of("a")
        old.dead = True
        self.assertEqual(await pool.run(site("a"), which_site), "a")
        self.assertTrue(old.closed)
        self.assertEqual(len(self.server.of("a")), 2)
        self.assertEqual(pool.open, 1)

    async def test_a_refused_connect_gives_its_slot_back(self) -> None:
        pool = self.pool(1)
        self.server.refuse.add("down")
        with self.assertRaises(pymysql.err.OperationalError):
            await pool.run(site("down"), which_site)
        self.assertEqual(pool.open, 0)
        self.assertEqual(await pool.run(site("up"), which_site), "up")

    async def test_other_errors_keep_the_connection(self) -> None:
        pool = self.pool(2)

        def bad_sql(cursor: FakeCursor) -> None:
            raise pymysql.err.ProgrammingError(1064, "syntax")

        with self.assertRaises(pymysql.err.ProgrammingError):
            await pool.run(site("a"), bad_sql)
        await pool.run(site("a"), which_site)
        self.assertEqual(len(self.server.of("a")), 1)


class SlowSiteTests(PoolCase):
    async def test_a_hanging_site_holds_its_share_of_workers_only(self) -> None:
        """A site whose queries hang holds ``per_site`` workers; the others keep
        answering meanwhile, and its queued queries run once it answers again."""
        pool = self.pool(3, per_site=1)
        gate = threading.Event()
        self.addCleanup(gate.set)
        started: list[int] = []

        def hang(cursor: FakeCursor, i: int) -> int:
            started.append(i)
            gate.wait(10)
            return i

        slow = [pool.run(site("slow"), hang, i) for i in range(5)]
        others = await DeferredList(
            [pool.run(site(f"fast{i}"), which_site) for i in range(20)], fireOnOneErrback=True)
        self.assertEqual(len(others), 20)
        # At most one in flight (its thread may not have begun yet), four waiting their turn.
        self.assertIn(started, ([], [0]))
        self.assertFalse(any(d.called for d in slow))
        gate.set()
        results = await DeferredList(slow, fireOnOneErrback=True)
        self.assertEqual([r for _, r in results], [0, 1, 2, 3, 4])

    async def test_a_cancelled_waiting_query_never_runs(self) -> None:
        """A start-up probe's timeout cancels a query still waiting for its site's turn."""
        pool = self.pool(2, per_site=1)
        gate = threading.Event()
        self.addCleanup(gate.set)
        ran: list[str] = []

        def held(cursor: FakeCursor, tag: str) -> str:
            ran.append(tag)
            gate.wait(10)
            return tag

        first = pool.run(site("a"), held, "first")
        second = pool.run(site("a"), held, "second")
        second.cancel()
        self.failureResultOf(second)
        gate.set()
        self.assertEqual(await first, "first")
        await pool.run(site("a"), which_site)
        self.assertEqual(ran, ["first"])

    async def test_a_failing_site_gets_one_worker(self) -> None:
        """Once its database failed, a site's queries go one at a time until one succeeds."""
        pool = self.pool(4, per_site=3)
        self.server.refuse.add("down")
        with self.assertRaises(pymysql.err.OperationalError):
            await pool.run(site("down"), which_site)
        gate = threading.Event()
        self.addCleanup(gate.set)
        running: list[int] = []

        began = threading.Event()

        def slow_fail(cursor: FakeCursor, i: int) -> None:
            running.append(i)
            began.set()
            gate.wait(10)
            raise pymysql.err.OperationalError(2013, "Lost connection")

        self.server.refuse.clear()
        calls = [pool.run(site("down"), slow_fail, i) for i in range(3)]
        self.assertEqual(await pool.run(site("other"), which_site), "other")
        # The first one's thread may not have begun when "other" answered: wait for it,
        # then let "other" pass once more, so a second "down" query had time to start.
        self.assertTrue(await deferToThread(began.wait, 10))
        self.assertEqual(await pool.run(site("other"), which_site), "other")
        self.assertEqual(running, [0])
        gate.set()
        for d in calls:
            with self.assertRaises(pymysql.err.OperationalError):
                await d
        self.assertEqual(sorted(running), [0, 1, 2])



class SwitchingConnection(FakeConnection):
    """A connection that can become another site's (COM_CHANGE_USER)."""

    def change_user(self, user: str, password: str, database: str) -> None:
        if database in self.server.refuse:
            raise pymysql.err.OperationalError(1045, f"Access denied ({database})")
        self.site = database
        self.server.switches.append(database)


class SwitchingServer(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.switches: list[str] = []

    def connect(self, **kwargs: Any) -> FakeConnection:
        conn = super().connect(**kwargs)
        conn.__class__ = SwitchingConnection
        return conn


class SwitchTests(PoolCase):
    """At the bound, another site's idle connection is switched to the site asking
    rather than closed and a new one opened (a bench's looks, nearly all)."""

    def switching(self, bound: int) -> DbPool:
        self.server = SwitchingServer()
        pool = DbPool(reactor, bound, connect=self.server.connect)
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    async def test_another_sites_idle_connection_is_switched(self) -> None:
        pool = self.switching(1)
        for name in ("a", "b", "c", "a"):
            self.assertEqual(await pool.run(site(name), which_site), name)
        self.assertEqual((len(self.server.made), self.server.switches), (1, ["b", "c", "a"]))
        self.assertEqual((pool.open, self.server.open), (1, 1))

    async def test_a_refused_switch_closes_it_and_connects_anew(self) -> None:
        pool = self.switching(1)
        await pool.run(site("a"), which_site)
        self.server.refuse.add("b")
        with self.assertRaises(pymysql.err.OperationalError):
            await pool.run(site("b"), which_site)
        (a,) = self.server.made
        self.assertTrue(a.closed)
        self.assertEqual((pool.open, self.server.open), (0, 0))
        self.server.refuse.clear()
        self.assertEqual(await pool.run(site("b"), which_site), "b")

    async def test_only_the_credentials_may_differ(self) -> None:
        pool = self.switching(1)
        await pool.run(site("a"), which_site)
        elsewhere = {**site("b"), "host": "db2"}
        self.assertEqual(await pool.run(elsewhere, which_site), "b")
        self.assertEqual(self.server.switches, [])
        self.assertEqual([c.closed for c in self.server.made], [True, False])
