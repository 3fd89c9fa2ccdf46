"""The shared MariaDB pool and the change feed's cheap look, on a real MariaDB.

* InnoDB's UPDATE_TIME and the digest: an idle site reads no rows, an SQL edit
  and a plain SQL DELETE are seen, our own redis_job_id writes read no rows.
* 30 sites, each with its own MariaDB user, asking at once through one pool:
  MariaDB's processlist never shows more of their connections than the bound,
  and none once they sat idle.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from btu_twisted.fifo import ScheduleFifo
from btu_twisted.sources import db_pool
from btu_twisted.sources.change_feed import ChangeFeed
from btu_twisted.sources.db_pool import DbPool
from btu_twisted.sources.mariadb import Database
from tests.integration.bench_sites import site_database
from tests.integration.daemon import wait_for
from tests.integration.support import MYSQL, TestDatabase, admin_connection


def database(name: str, user: str = "", password: str = "", pool: DbPool | None = None) -> Database:
    return Database(reactor, host=MYSQL["host"], port=MYSQL["port"],
                    user=user or MYSQL["user"], password=password or MYSQL["password"],
                    database=name, pool=pool)


async def next_second() -> None:
    """Let MariaDB's clock pass a whole second (UPDATE_TIME counts whole seconds)."""
    await deferLater(reactor, 1.05, lambda: None)


class TableTimesTests(unittest.TestCase):
    timeout = 60

    async def site_with_feed(self) -> tuple[TestDatabase, Database, ChangeFeed]:
        db = TestDatabase(load_samples=False)
        self.addCleanup(db.drop)
        db.add_task("BTU-1", "tests.jobfuncs.record")
        db.add_schedules([(f"TS-{i}", "BTU-1", "* * * * *", True, "default", None)
                          for i in range(3)])
        mdb = database(db.name)
        mdb.start()
        self.addCleanup(mdb.stop)
        self.fifo = ScheduleFifo()
        self.refreshes = 0

        def refresh() -> None:
            self.refreshes += 1

        feed = ChangeFeed(reactor, mdb, self.fifo, on_zone_changed=refresh, stagger=1.0)
        return db, mdb, feed

    async def settle(self, feed: ChangeFeed) -> None:
        """Look until a look reads no digest: the feed is idle."""
        await feed.look()
        await next_second()
        await feed.look()  # reads the digest again when the first saw this second's time
        self.fifo.take(100)

    async def test_idle_site_reads_no_rows_and_a_delete_is_seen(self) -> None:
        db, mdb, feed = await self.site_with_feed()
        await self.settle(feed)
        reads = feed.reads
        for _ in range(3):
            await feed.look()
        self.assertEqual(feed.reads, reads, "an idle site read its rows")

        db.execute("UPDATE `tabBTU Task Schedule` SET modified = %s WHERE name = 'TS-1'",
                   (datetime.now() + timedelta(seconds=1),))
        await feed.look()
        self.assertEqual(self.fifo.take(10), ["TS-1"])
        self.assertEqual(self.refreshes, 0)

        await next_second()
        db.execute("DELETE FROM `tabBTU Task Schedule` WHERE name = 'TS-2'")
        await feed.look()
        self.assertEqual(self.refreshes, 1, "a plain SQL DELETE was not seen")

    async def test_our_own_job_id_writes_read_no_rows(self) -> None:
        """redis_job_id writes move UPDATE_TIME, not the digest: no change query."""
        db, mdb, feed = await self.site_with_feed()
        await self.settle(feed)
        reads = feed.reads
        await mdb.write_job_ids({"TS-0": "job-0", "TS-1": "job-1"})
        await feed.look()
        await next_second()
        await feed.look()
        self.assertEqual(feed.reads, reads)
        self.assertEqual(db.execute("SELECT redis_job_id FROM `tabBTU Task Schedule`"
                                    " WHERE name = 'TS-0'"), [("job-0",)])

    async def test_an_sql_edit_in_the_second_of_the_last_look_is_seen(self) -> None:
        db, mdb, feed = await self.site_with_feed()
        await self.settle(feed)
        db.execute("UPDATE `tabBTU Task Schedule` SET modified = %s WHERE name = 'TS-0'",
                   (datetime.now() + timedelta(seconds=1),))
        await feed.look()  # sees the move: UPDATE_TIME of this second
        self.fifo.take(10)
        db.execute("UPDATE `tabBTU Task Schedule` SET modified = %s WHERE name = 'TS-2'",
                   (datetime.now() + timedelta(seconds=2),))  # very likely the same second
        await next_second()
        await feed.look()
        self.assertEqual(self.fifo.take(10), ["TS-2"])


def held_by(users: set[str], closed: frozenset[int] | set[int] = frozenset()) -> int:
    """Connections MariaDB holds for ``users`` now (its processlist), leaving out
    ``closed``: ones the pool has already quit, which MariaDB may list a moment longer."""
    conn = admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ID, USER FROM information_schema.PROCESSLIST")
            rows = cur.fetchall()
        gone = set(closed)  # read after the sample: a quit sent before it is excused
        return sum(1 for (ident, user) in rows if user in users and ident not in gone)
    finally:
        conn.close()


class BoundOnRealMariaDBTests(unittest.TestCase):
    timeout = 180

    async def test_thirty_sites_hold_no_more_connections_than_the_bound(self) -> None:
        bound = 4
        pool = DbPool(reactor, bound, per_site=2, idle_secs=0.5)
        pool.start()
        self.addCleanup(pool.stop)
        sites: list[Database] = []
        users: set[str] = set()
        for _ in range(30):
            _, values = site_database(self)
            users.add(values["db_user"])
            sites.append(database(values["db_name"], values["db_user"], values["db_password"],
                                  pool=pool))
        for site in sites:
            site.start()
            self.addCleanup(site.stop)

        # Count the sites' connections in the processlist while they all ask at once.
        # MariaDB drops a quit connection from its list a moment after the quit, so
        # the ones the pool has closed (to make room for another site's) are left out.
        seen: list[int] = []
        done = threading.Event()
        closed: set[int] = set()
        real_close = db_pool._close

        def recording_close(conn: Any) -> None:
            try:
                closed.add(conn.thread_id())
            except Exception:
                pass  # a connection that never finished its handshake has no id
            real_close(conn)

        self.patch(db_pool, "_close", recording_close)

        def sample() -> None:
            while not done.is_set():
                seen.append(held_by(users, closed))

        sampler = deferToThread(sample)
        for _ in range(3):
            calls = []
            for site in sites:
                calls += [site.has_btu_tables(), ensureDeferred(site.table_times(None, True)),
                          ensureDeferred(site.schedule_states("")),
                          ensureDeferred(site.read_schedules(["TS-1"]))]
            results = await DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)
            self.assertEqual(len(results), 4 * 30)
        done.set()
        await sampler
        self.assertGreater(max(seen, default=0), 0, "no connection of the sites was ever seen")
        self.assertLessEqual(max(seen), bound, f"processlist samples: {seen}")
        self.assertLessEqual(pool.peak, bound)
        self.assertTrue(all(r for r in [await s.has_btu_tables() for s in sites[:3]]))

        # Unused, they are closed (the pool's reaper, every idle_secs / 2).
        await wait_for(lambda: pool.open == 0, timeout=10)
        await wait_for(lambda: held_by(users) == 0, timeout=10)


class SwitchOnRealMariaDBTests(unittest.TestCase):
    """COM_CHANGE_USER on a real MariaDB: one connection serves site after site, each
    with its own user's rights and a fresh session; a wrong password never leaves the
    connection to the site before."""

    timeout = 60

    async def test_one_connection_becomes_each_site_in_turn(self) -> None:
        pool = DbPool(reactor, 1, idle_secs=30)
        pool.start()
        self.addCleanup(pool.stop)
        values = [site_database(self)[1] for _ in range(3)]
        connects = [dict(host=MYSQL["host"], port=MYSQL["port"], user=v["db_user"],
                         password=v["db_password"], database=v["db_name"],
                         charset="utf8mb4", autocommit=True) for v in values]

        def who(cursor: Any) -> tuple[Any, ...]:
            cursor.execute("SELECT CONNECTION_ID(), CURRENT_USER(), DATABASE(), @left, "
                           "@@autocommit")
            row = tuple(cursor.fetchone())
            cursor.execute("SET @left = 'by the site before'")
            cursor.execute("SHOW DATABASES LIKE 'btu_test_%'")
            return row + (sorted(r[0] for r in cursor.fetchall()),)

        seen = [await pool.run(c, who) for c in connects + connects[:1]]
        self.assertEqual(len({row[0] for row in seen}), 1, seen)  # one connection
        for row, v in zip(seen, values + values[:1], strict=True):
            self.assertEqual(row[1:], (f"{v['db_user']}@%", v["db_name"], None, 1,
                                       [v["db_name"]]))
        self.assertEqual(pool.peak, 1)

        wrong = {**connects[1], "password": "not it"}
        with self.assertRaises(pymysql.err.OperationalError) as caught:
            await pool.run(wrong, who)
        self.assertEqual(caught.exception.args[0], 1045)  # access denied, from a new connect
        self.assertEqual(pool.open, 0)
        self.assertEqual((await pool.run(connects[2], who))[2], values[2]["db_name"])
