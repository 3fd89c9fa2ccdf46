"""Outages and hostile input against a whole in-process daemon.

MariaDB, Redis and the Frappe site are reached through ``TcpProxy`` so an
outage is a switch in the test, never a stopped server.  Every test checks the
two promises that matter after a fault: no (schedule, scheduled time) is
enqueued twice, and nothing is lost beyond what the design says an outage
costs.

What an outage costs, by design (DESIGN.md: "At most one member per schedule
at any moment", "a run missed ... fires once, late"): a schedule has exactly
one planned run in Redis at a time, so when runs cannot be enqueued for a
while, the one that was planned fires once, late, when the fault ends, and the
runs that would have followed it during the fault are coalesced into it (as
cron and rq-scheduler do), not replayed one by one.  With
``misfire_grace_secs`` the late run is skipped instead.  Either way every run
before the fault and every run after recovery is there exactly once.
"""

from __future__ import annotations

import gc
import json
import math
import os
import pickle
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.server import Site

from btu_twisted.jobs import frappe_http
from btu_twisted.store.schedule_store import LAST_ENQUEUED, MEMBER_INDEX, SCHEDULE_SET
from tests.integration.daemon import make_service, wait_for
from tests.integration.proxy import TcpProxy
from tests.integration.support import (
    MYSQL,
    REDIS_PORT,
    config_values,
    exclusive_redis_db,
    fresh_services,
    parse_rq_time,
)
from tests.test_builders import FakeFrappe, TrackingFactory, ok_answer, status_answer

DB = 6
EVERY = "* * * * * * *"
EVERY_2 = "*/2 * * * * * *"
EVERY_3 = "*/3 * * * * * *"
PERIOD = {EVERY: 1, EVERY_2: 2, EVERY_3: 3}
PING = b'{"request_type": "ping", "request_content": null}'


# --- helpers shared with test_exactly_once -----------------------------------


def collect_jobs(client: Any) -> list[tuple[str, int, float | None]]:
    """Every job hash in the database as (task_schedule, scheduled_time, enqueued_at)."""
    jobs = []
    for key in client.scan_iter(match="rq:job:*", count=1000):
        if key.count(b":") != 2:
            continue
        meta, enqueued = client.hmget(key, "meta", "enqueued_at")
        if meta is None:
            continue
        data = pickle.loads(meta)
        jobs.append((data["task_schedule"], int(data["scheduled_time"]), parse_rq_time(enqueued)))
    return jobs


def duplicates(jobs: Iterable[tuple[str, int, Any]]) -> dict[tuple[str, int], int]:
    counts = Counter((name, when) for name, when, _ in jobs)
    return {pair: n for pair, n in counts.items() if n > 1}


def cron_times(period: int, first: float, last: float) -> list[int]:
    """Unix seconds in [first, last] matched by a ``*/period`` seconds field (UTC minutes
    are multiples of 60, and 60 is a multiple of 1, 2 and 3)."""
    start = math.ceil(first)
    start += (-start) % period
    return list(range(start, int(math.floor(last)) + 1, period))


def missing_runs(
    jobs: Iterable[tuple[str, int, Any]], crons: dict[str, str], first: float, last: float
) -> dict[str, list[int]]:
    """Per schedule, the cron times in [first, last] that have no job."""
    have: dict[str, set[int]] = {}
    for name, when, _ in jobs:
        have.setdefault(name, set()).add(when)
    out = {}
    for name, cron in crons.items():
        gone = [t for t in cron_times(PERIOD[cron], first, last) if t not in have.get(name, set())]
        if gone:
            out[name] = gone
    return out


def ping_once(path: str, timeout: float = 5.0) -> float:
    """Blocking ping (run it in a thread); returns the round-trip time in seconds."""
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(PING)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(2048)
            if not chunk:
                break
            reply += chunk
    if reply != b"pong\n":
        raise AssertionError(f"ping answered {reply!r}")
    return time.monotonic() - started


class Pinger:
    """A thread pinging the daemon's socket every ``every`` seconds until stopped."""

    def __init__(self, path: str, every: float = 0.1) -> None:
        self.path = path
        self.every = every
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Pinger:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.latencies.append(ping_once(self.path))
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(e))
            self._stop.wait(self.every)

    def stop(self) -> Deferred[None]:
        self._stop.set()
        return deferToThread(self._thread.join, 10)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, max(0.0, seconds), lambda: None)


async def sleep_until_fraction(fraction: float) -> float:
    """Sleep until the next wall-clock second plus ``fraction``; returns that time."""
    target = math.floor(time.time()) + 1 + fraction
    await sleep(target - time.time())
    return time.time()


# --- the test base -----------------------------------------------------------


class FaultCase(unittest.TestCase):
    """A fresh MariaDB database, Redis db 6, proxies, and a log recorder."""

    timeout = 90

    async def setUp(self) -> None:
        await exclusive_redis_db(self, DB)
        self.db, self.redis = fresh_services(self, DB)
        self.service: Any = None
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.url = f"redis://127.0.0.1:{REDIS_PORT}/{DB}"
        self.db.add_task("BTU-REC", "tests.jobfuncs.record", repr({"k": 1}))

    async def tearDown(self) -> None:
        if self.service is not None and self.service.running:
            await self.service.stopService()
        if os.environ.get("BTU_FAULT_LOG"):  # BTU_FAULT_LOG=/tmp/x.log: every event, to debug
            with open(os.environ["BTU_FAULT_LOG"], "a") as out:
                out.write(f"=== {self.id()}\n")
                for e in self.events:
                    level = getattr(e.get("log_level"), "name", "-")
                    out.write(f"{e.get('log_time', 0):.3f} {level} {formatEvent(e)}\n")

    async def proxy(self, target_port: int) -> TcpProxy:
        proxy = TcpProxy(reactor, target_port)
        await proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    async def start(self, **overrides: Any) -> Any:
        values = config_values(self.db.name, redis_db=DB, **overrides)
        self.service, fatal = make_service(values)
        self.addCleanup(lambda: os.path.exists(values["socket_path"])
                        and os.unlink(values["socket_path"]))
        self.socket_path = values["socket_path"]
        await self.service.startService()
        self.assertEqual(fatal, [])
        return self.service

    def add_schedules(self, crons: dict[str, str], task: str = "BTU-REC") -> None:
        self.db.add_schedules([(n, task, c, True, "default", None) for n, c in crons.items()])

    def jobs(self) -> list[tuple[str, int, float | None]]:
        return collect_jobs(self.redis)

    def lines(self, predicate: Callable[[dict[str, Any]], bool] = lambda e: True) -> list[str]:
        return [formatEvent(e) for e in self.events if predicate(e)]

    def outage_lines(self, service: str) -> list[str]:
        return self.lines(
            lambda e: e.get("log_format", "").startswith("{service} is unavailable")
            and e.get("service") == service
        )

    def errors(self, allowed: Callable[[str], bool] = lambda text: False) -> list[str]:
        """Error and critical lines, minus the allowed ones."""
        found = self.lines(
            lambda e: e.get("log_level") in (LogLevel.error, LogLevel.critical)
        )
        return [text for text in found if not allowed(text)]

    async def wait_jobs_after(self, crons: dict[str, str], after: float, timeout: float) -> None:
        """Wait until every schedule has a job scheduled at or after ``after``."""

        def done() -> bool:
            latest: dict[str, int] = {}
            for name, when, _ in self.jobs():
                latest[name] = max(latest.get(name, 0), when)
            return all(latest.get(name, 0) >= after for name in crons)

        await wait_for(done, timeout=timeout, step=0.2)

    def assert_once_each(
        self, jobs: list[tuple[str, int, float | None]], crons: dict[str, str],
        first: float, last: float, gap: tuple[float, float] | None = None,
    ) -> dict[str, list[int]]:
        """No pair twice; every cron time in [first, last] present, except inside ``gap``."""
        self.assertEqual(duplicates(jobs), {}, "a run was enqueued twice")
        missing = missing_runs(jobs, crons, first, last)
        if gap is None:
            self.assertEqual(missing, {}, "runs were lost")
            return missing
        outside = {
            name: [t for t in times if not gap[0] <= t <= gap[1]]
            for name, times in missing.items()
        }
        self.assertEqual({n: t for n, t in outside.items() if t}, {},
                         f"runs lost outside the outage {gap}")
        return missing


# --- Redis -------------------------------------------------------------------


class RedisOutageTests(FaultCase):
    """Redis goes away for ~6 s while schedules fire every second (6 s so that the
    5 s command deadline expires inside the outage and ``status`` shows it)."""

    CRONS = {"TS-E1": EVERY, "TS-E2": EVERY, "TS-T2": EVERY_2, "TS-T3": EVERY_3}
    OUTAGE = 6.0
    # Runs from this long after the end of the outage on must all be there:
    # txredisapi reconnects 1 s after a drop, the timer's backoff is then 1 s.
    RECOVERY = 3.5

    async def outage(self, mode: str, **overrides: Any) -> dict[str, Any]:
        """Run schedules, cut Redis for OUTAGE seconds in ``mode``, recover, stop.

        Returns the jobs and the times of the outage for the checks."""
        self.add_schedules(self.CRONS)
        proxy = await self.proxy(REDIS_PORT)
        started = time.time()
        service = await self.start(rq_port=proxy.port, **overrides)
        await self.wait_jobs_after(self.CRONS, started + 2, timeout=15)
        # Mid-second, when every schedule's next run is planned and built.
        paused_at = await sleep_until_fraction(0.5)
        await proxy.pause(mode)
        pinger = Pinger(self.socket_path).start()
        statuses = []
        while time.time() < paused_at + self.OUTAGE:
            statuses.append((time.time(), service.status()))
            await sleep(0.25)
        await pinger.stop()
        resumed_at = time.time()
        proxy.resume()
        await self.wait_jobs_after(self.CRONS, resumed_at + self.RECOVERY + 2, timeout=30)
        last = time.time() - 1
        await service.stopService()
        jobs = self.jobs()
        self.assertEqual(pinger.errors, [])
        self.assertGreater(len(pinger.latencies), 10)
        self.assertLess(max(pinger.latencies), 0.5, "the socket stalled during the outage")
        states = [(round(t - paused_at, 2), s["services"]["redis"]["state"]) for t, s in statuses]
        self.assertEqual(states[-1][1], "down", states)
        self.assertEqual(service.status()["services"]["redis"]["state"], "ok")
        self.assertEqual(len(self.outage_lines("Redis")), 1, self.lines())
        return dict(jobs=jobs, first=started + 2, last=last, paused=paused_at,
                    resumed=resumed_at)

    def assert_late_once(self, run: dict[str, Any]) -> None:
        """Each schedule's one planned run fired once, late, after Redis came back;
        runs before the outage and after recovery are all there once."""
        paused, resumed = run["paused"], run["resumed"]
        self.assert_once_each(run["jobs"], self.CRONS, run["first"], run["last"],
                              gap=(paused, resumed + self.RECOVERY))
        for name in self.CRONS:
            during = [(when, enq) for n, when, enq in run["jobs"]
                      if n == name and paused <= when < resumed]
            self.assertEqual(len(during), 1, f"{name}: {during}")
            when, enqueued = during[0]
            self.assertLess(when, paused + PERIOD[self.CRONS[name]] + 0.01)
            self.assertGreaterEqual(enqueued, resumed - 0.5, f"{name} was not late")
        # One line per round of late runs (a single run's, or a summary
        # naming them all), so each schedule is named in exactly one.
        late = self.lines(lambda e: " late" in e.get("log_format", "")
                          and "enqueued" in e.get("log_format", ""))
        for name in self.CRONS:
            self.assertEqual(sum(name in line for line in late), 1, late)

    async def test_outage_fires_planned_runs_once_late(self) -> None:
        """Connections cut and refused for ~5 s: the planned run of every schedule
        is enqueued once, late; nothing before or after is lost or doubled; one
        'Redis is unavailable' line; the socket answers within 0.5 s throughout."""
        run = await self.outage("drop")
        self.assert_late_once(run)
        self.assertEqual(self.errors(lambda t: "Redis is unavailable" in t), [])

    async def test_lost_replies_do_not_lose_the_schedule(self) -> None:
        """Redis runs the commands but the replies never arrive (the claim did
        happen, the daemon cannot know): each run is still there exactly once and
        every schedule keeps running after recovery, instead of waiting for the
        next full refresh."""
        run = await self.outage("mute")
        paused, resumed = run["paused"], run["resumed"]
        self.assert_once_each(run["jobs"], self.CRONS, run["first"], run["last"],
                              gap=(paused, resumed + self.RECOVERY))
        for name in self.CRONS:
            during = [w for n, w, _ in run["jobs"] if n == name and paused <= w < resumed]
            self.assertLessEqual(len(during), 1, f"{name}: {during}")
        self.assertEqual(self.errors(lambda t: "Redis is unavailable" in t), [])

    async def test_misfire_grace_skips_instead_of_firing_late(self) -> None:
        """With misfire_grace_secs = 1, a run that could only be enqueued more than
        1 s late is skipped (logged), not enqueued; nothing is doubled or lost
        outside the outage."""
        run = await self.outage("drop", misfire_grace_secs=1)
        paused, resumed = run["paused"], run["resumed"]
        self.assert_once_each(run["jobs"], self.CRONS, run["first"], run["last"],
                              gap=(paused, resumed + self.RECOVERY))
        for name in self.CRONS:
            during = [(w, e) for n, w, e in run["jobs"] if n == name and paused <= w < resumed]
            self.assertEqual(during, [], f"{name} fired late despite misfire_grace_secs")
        for _, when, enqueued in run["jobs"]:
            self.assertLess(enqueued - when, 1.5, "a job was enqueued later than the grace")
        skipped = self.lines(lambda e: "more than misfire_grace_secs" in e.get("log_format", ""))
        for name in self.CRONS:
            self.assertEqual(sum(name in line for line in skipped), 1, skipped)
        self.assertEqual(self.errors(lambda t: "Redis is unavailable" in t), [])

    async def test_redis_down_at_start(self) -> None:
        """With startup_without_database_connections, the daemon starts while Redis
        refuses connections, answers its socket, and plans and runs everything
        once Redis is back."""
        self.add_schedules(self.CRONS)
        self.add_schedules({"TS-DAILY": "0 0 13 * * * *"})
        proxy = await self.proxy(REDIS_PORT)
        await proxy.pause("refuse")
        service = await self.start(rq_port=proxy.port, startup_without_database_connections=True)
        self.assertLess(await deferToThread(ping_once, self.socket_path), 0.5)
        await sleep(3)
        self.assertLess(await deferToThread(ping_once, self.socket_path), 0.5)
        self.assertEqual(self.jobs(), [])
        await wait_for(lambda: service.status()["services"]["redis"]["state"] == "down", 10)
        self.assertLess(await deferToThread(ping_once, self.socket_path), 0.5)
        resumed = time.time()
        proxy.resume()
        await wait_for(lambda: self.redis.hexists(MEMBER_INDEX, "TS-DAILY"), timeout=20)
        back = time.time()
        await self.wait_jobs_after(self.CRONS, time.time() + 3, timeout=20)
        last = time.time() - 1
        await service.stopService()
        jobs = self.jobs()
        # txredisapi reconnects with its own backoff (up to 10 s); runs missed
        # until then coalesce into one late run each.
        self.assert_once_each(jobs, self.CRONS, back + 1, last)
        planned = back - resumed
        self.assertLess(planned, 15)
        self.assertEqual(len(self.outage_lines("Redis")), 1, self.lines())
        self.assertEqual(self.errors(lambda t: "Redis is unavailable" in t), [])


# --- MariaDB -----------------------------------------------------------------


class MariaDbOutageTests(FaultCase):
    """MariaDB goes away during a full refresh, or is away at start."""

    FAR = {f"TS-D{i:02d}": "0 0 13 * * * *" for i in range(20)}
    CRONS = {"TS-E1": EVERY, "TS-T2": EVERY_2}

    async def test_outage_during_full_refresh(self) -> None:
        """Redis lost its members and the full refresh meant to heal it finds
        MariaDB down; it retries with backoff and, within a few seconds of
        MariaDB's return, every enabled schedule is planned again and running.
        The outage is one log line."""
        self.add_schedules({**self.FAR, **self.CRONS})
        self.db.add_schedule("TS-OFF", "BTU-REC", EVERY, enabled=False)
        proxy = await self.proxy(MYSQL["port"])
        started = time.time()
        service = await self.start(mysql_port=proxy.port)
        await wait_for(lambda: self.redis.hlen(MEMBER_INDEX) == 22, timeout=10)
        await self.wait_jobs_after(self.CRONS, started + 2, timeout=15)
        await proxy.pause("drop")
        # Redis forgets every member (a flush, a failover to an empty replica).
        self.redis.delete(SCHEDULE_SET, MEMBER_INDEX)
        await service.refresh._tick()  # what the refresh LoopingCall runs
        paused_at = time.time()
        # Only the refresh plans the FAR ones (a replan of TS-E1 or TS-T2 whose
        # row was read before the cut may still land).
        self.assertEqual({n.decode() for n in self.redis.hkeys(MEMBER_INDEX)} & set(self.FAR),
                         set())
        await sleep(3)
        self.assertLess(await deferToThread(ping_once, self.socket_path), 0.5)
        self.assertEqual(service.status()["services"]["mariadb"]["state"], "down")
        resumed = time.time()
        proxy.resume()
        await wait_for(lambda: self.redis.hlen(MEMBER_INDEX) == 22, timeout=20, step=0.1)
        healed = time.time() - resumed
        await self.wait_jobs_after(self.CRONS, time.time() + 3, timeout=15)
        last = time.time() - 1

        def planned() -> set[str]:
            return {m.decode().split("|")[0] for m in self.redis.zrange(SCHEDULE_SET, 0, -1)}

        # Read while running: an every-second run is out of the set between its
        # claim and its replan, and a claim settled after the planner stopped
        # is not replanned until the next start.
        await wait_for(lambda: planned() == set(self.FAR) | set(self.CRONS), timeout=5)
        await service.stopService()
        self.assertLessEqual(set(self.FAR), planned())
        self.assertLessEqual(planned(), set(self.FAR) | set(self.CRONS))
        self.assertLess(healed, 10, "planning did not resume soon after MariaDB came back")
        jobs = self.jobs()
        self.assert_once_each(jobs, self.CRONS, started + 2, last,
                              gap=(paused_at - 3, resumed + 10))
        self.assertEqual(len(self.outage_lines("MariaDB")), 1, self.lines())
        self.assertEqual(self.errors(lambda t: "MariaDB is unavailable" in t), [])

    async def test_mariadb_down_at_start(self) -> None:
        """With startup_without_database_connections, the daemon starts while
        MariaDB refuses connections, answers its socket, and once MariaDB is back
        plans every schedule and runs them, each run once."""
        self.add_schedules({**self.FAR, **self.CRONS})
        proxy = await self.proxy(MYSQL["port"])
        await proxy.pause("refuse")
        service = await self.start(mysql_port=proxy.port, startup_without_database_connections=True)
        self.assertLess(await deferToThread(ping_once, self.socket_path), 0.5)
        await sleep(3)
        self.assertEqual(self.redis.zcard(SCHEDULE_SET), 0)
        self.assertLess(await deferToThread(ping_once, self.socket_path), 0.5)
        resumed = time.time()
        proxy.resume()
        await wait_for(lambda: self.redis.hlen(MEMBER_INDEX) == 22, timeout=20, step=0.1)
        healed = time.time() - resumed
        await self.wait_jobs_after(self.CRONS, time.time() + 3, timeout=15)
        last = time.time() - 1
        await service.stopService()
        jobs = self.jobs()
        self.assertEqual(duplicates(jobs), {})
        self.assert_once_each(jobs, self.CRONS, resumed + healed + 2, last)
        self.assertLess(healed, 10)
        self.assertEqual(len(self.outage_lines("MariaDB")), 1, self.lines())
        self.assertEqual(self.errors(lambda t: "MariaDB is unavailable" in t), [])


# --- the Frappe site -----------------------------------------------------------


class SiteOutageTests(FaultCase):
    """job_builder = "frappe" against a twisted.web stand-in of the site."""

    CRONS = {"TS-E1": EVERY, "TS-T2": EVERY_2}

    async def site(self) -> tuple[FakeFrappe, TcpProxy]:
        site = FakeFrappe(ok_answer({"record_redis": self.url, "via": "site"}))
        factory = TrackingFactory(Site(site))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(factory.close_all)
        proxy = await self.proxy(port.getHost().port)
        return site, proxy

    async def start_frappe(self, proxy: TcpProxy) -> Any:
        self.add_schedules(self.CRONS)
        return await self.start(job_builder="frappe", webserver_ip="127.0.0.1",
                                webserver_port=proxy.port, webserver_token="token k:s",
                                webserver_timeout_secs=3)

    async def test_site_down_then_back(self) -> None:
        """The site answers 500 for ~2.5 s, then refuses connections for ~2.5 s:
        each schedule's planned run waits (transient error, retried with
        backoff, logged once per schedule) and fires once, late, when the site
        is back; every run before and after is there once, the outage is one
        log line, and the daemon never stopped."""
        site, proxy = await self.site()
        started = time.time()
        service = await self.start_frappe(proxy)
        await self.wait_jobs_after(self.CRONS, started + 2, timeout=15)
        down_at = await sleep_until_fraction(0.5)
        good = site.respond
        site.respond = status_answer(500, b'{"exc_type": "ServerError"}')
        await sleep(2.5)
        await proxy.pause("refuse")
        await sleep(2.5)
        self.assertLess(await deferToThread(ping_once, self.socket_path), 0.5)
        site.respond = good
        back_at = time.time()
        proxy.resume()

        def late_jobs() -> dict[str, tuple[int, float]]:
            found = {n: (w, e) for n, w, e in self.jobs() if e - w >= 1 and w >= down_at}
            return found if set(found) == set(self.CRONS) else {}

        late = await wait_for(late_jobs, timeout=20, step=0.2)
        recovered = max(e for _, e in late.values())
        await self.wait_jobs_after(self.CRONS, time.time() + 3, timeout=15)
        last = time.time() - 1
        await service.stopService()
        jobs = self.jobs()
        # The wait for the site doubles per attempt, so recovery may lag the
        # site's return by up to one wait (8 s after a 5 s outage).
        self.assertLess(recovered - back_at, 9)
        self.assert_once_each(jobs, self.CRONS, started + 2, last, gap=(down_at, recovered + 1.5))
        for name in self.CRONS:
            during = [(w, e) for n, w, e in jobs if n == name and down_at <= w < recovered]
            # Jobs are built 2 s ahead: runs already built when the site failed
            # are on time; then the one planned run waits and fires late.
            on_time = [w for w, e in during if e - w < 1]
            delayed = [(w, e) for w, e in during if e - w >= 1]
            self.assertTrue(all(w <= down_at + 2.01 for w in on_time), f"{name}: {during}")
            self.assertEqual(len(delayed), 1, f"{name}: {during}")
            when, enqueued = delayed[0]
            self.assertLess(when, down_at + 2 + PERIOD[self.CRONS[name]] + 0.01)
            self.assertGreaterEqual(enqueued, back_at - 0.5)
        delayed_lines = self.lines(lambda e: "delayed, retrying" in e.get("log_format", ""))
        self.assertEqual(len(delayed_lines), len(self.CRONS), delayed_lines)
        self.assertEqual(len(self.outage_lines("Frappe site")), 1, self.lines())
        self.assertEqual(self.errors(lambda t: "Frappe site is unavailable" in t), [])
        self.assertTrue(service.status()["enqueued"] > 0)

    async def test_bad_answers_skip_runs_with_a_clear_error(self) -> None:
        """A body over the 16 MiB limit, or one that is not Frappe's byte array,
        is a permanent error for that run: no job, one error line per run naming
        the schedule and the reason, and the next runs go on normally once the
        site answers properly again."""
        site, proxy = await self.site()
        started = time.time()
        service = await self.start_frappe(proxy)
        await self.wait_jobs_after(self.CRONS, started + 2, timeout=15)
        good = site.respond
        huge = b" " * (frappe_http.MAX_BODY_BYTES + 1)
        bad_from = await sleep_until_fraction(0.5)
        site.respond = status_answer(200, huge)
        await sleep(1.5)
        site.respond = status_answer(200, b"<html>Maintenance</html>", b"text/html")
        await sleep(1.5)
        site.respond = status_answer(200, json.dumps({"message": "pong"}).encode())
        await sleep(1.5)
        site.respond = good
        bad_until = time.time()
        await self.wait_jobs_after(self.CRONS, bad_until + 3.5, timeout=20)
        last = time.time() - 1
        self.assertTrue(service.running)
        await service.stopService()
        jobs = self.jobs()
        # Jobs are built 2 s ahead: the bad window covers runs up to bad_until + 2.
        missing = self.assert_once_each(jobs, self.CRONS, started + 2, last,
                                        gap=(bad_from, bad_until + 2.5))
        for name in self.CRONS:
            self.assertGreaterEqual(len(missing.get(name, [])), 2, f"{name}: {missing}")
            # A skipped run is consumed: recorded as done, never enqueued later.
            for when in missing.get(name, []):
                self.assertFalse(any(n == name and w == when for n, w, _ in jobs))
        skipped = self.lines(lambda e: "skipped: {reason}" in e.get("log_format", ""))
        reasons = "\n".join(skipped)
        self.assertIn("larger than", reasons)
        self.assertIn("not JSON", reasons)
        self.assertIn("not a non-empty byte array", reasons)
        self.assertEqual(sum(len(t) for t in missing.values()), len(skipped), reasons)
        for line in skipped:
            self.assertRegex(line, r"^run of TS-(E1|T2) at \S+ skipped: schedule TS-")
            self.assertNotIn("\n", line)
        # Error level when a schedule breaks or its reason changes; repeats of
        # the same reason are debug lines, so per-second schedules don't flood.
        errors = set(self.errors())
        self.assertLessEqual(errors, set(skipped))
        error_text = "\n".join(errors)
        for phrase in ("larger than", "not JSON", "not a non-empty byte array"):
            self.assertIn(phrase, error_text)
        self.assertGreaterEqual(len([e for e in errors if e.startswith("run of TS-E1 ")]), 3)
        self.assertEqual(int(self.redis.hget(LAST_ENQUEUED, "TS-E1")), max(
            w for n, w, _ in jobs if n == "TS-E1"))


# --- hostile socket input ------------------------------------------------------


def _send_and_close(path: str, data: bytes, read: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon closed on us once it had seen enough
        if not read:
            return b""
        reply = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return reply


def _hostile_clients(path: str) -> list[bytes]:
    """Runs in a thread: every kind of bad client, one after another, some at once."""
    replies = []
    for _ in range(20):
        replies.append(_send_and_close(path, os.urandom(4096)))
    big = (b'{"request_type": "create_task_schedule", "request_content": "'
           + b"A" * (10 * 1024 * 1024) + b'"}')
    replies.append(_send_and_close(path, big))
    replies.append(_send_and_close(
        path, b'{"request_type": "create_task_schedule", "request_content": "TS-\xff\xfe"}'))
    replies.append(_send_and_close(
        path, b'\xc3\x28{"request_type": "create_task_schedule", "request_content": "TS-X"}'))
    replies.append(_send_and_close(
        path, b'garbage {"request_type": "create_task_schedule", "request_content": "TS-G"}'))
    replies.append(_send_and_close(
        path, b'{"request_type": "create_task_schedule", "request_content": ["TS-L"]}'))
    replies.append(_send_and_close(path, b"[" * 100000))
    for _ in range(20):  # closed mid-request
        _send_and_close(
            path, b'{"request_type": "create_task_schedule", "request_content": "TS-HALF',
            read=False)
    # Many slow writers at once: half a request each, then gone.
    socks = []
    for _ in range(50):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(b'{"request_type": "create_task_schedule", "request_')
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        s.close()
    return replies


def _rss_bytes() -> int:
    """This process's resident set size (the daemon under test runs in it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class HostileSocketTests(FaultCase):
    """Bad clients cost only their own connection."""

    async def test_hostile_input_does_not_stall_or_queue(self) -> None:
        """Random bytes, a 10 MiB request, invalid UTF-8, 200 silent connections and
        connections closed mid-request, all while a well-behaved client pings:
        every ping answers within 100 ms, bad requests get an error line (where
        the client still listens), and nothing is queued for planning."""
        service = await self.start()
        queued: list[str] = []
        original = service.control.request_planning

        def spy(name: str) -> bool:
            queued.append(name)
            return original(name)

        service.control.request_planning = spy
        await wait_for(lambda: service.refresh.last, timeout=10)
        gc.collect()
        baseline = _rss_bytes()
        silent = []
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect(self.socket_path)  # a Unix connect completes without the reactor
            silent.append(s)
        self.addCleanup(lambda: [s.close() for s in silent])
        pinger = Pinger(self.socket_path, every=0.02).start()
        try:
            replies = await deferToThread(_hostile_clients, self.socket_path)
            await sleep(0.5)
        finally:
            await pinger.stop()
        self.assertEqual(pinger.errors, [])
        self.assertGreater(len(pinger.latencies), 20)
        slow = [round(t, 3) for t in pinger.latencies if t >= 0.1]
        self.assertEqual(slow, [], f"pings over 100 ms out of {len(pinger.latencies)}")
        for reply in replies:
            if reply:
                self.assertTrue(reply.startswith(b"Error: "), reply[:200])
                self.assertEqual(reply.count(b"\n"), 1, reply[:200])
        self.assertTrue(any(b"larger than" in r for r in replies))
        self.assertTrue(any(b"UTF-8" in r for r in replies))
        self.assertEqual(queued, [])
        self.assertEqual(len(service.fifo), 0)
        self.assertEqual(self.redis.zcard(SCHEDULE_SET), 0)
        self.assertEqual(self.jobs(), [])
        # The silent ones are still connected and the daemon still serves.
        self.assertLess(await deferToThread(ping_once, self.socket_path), 0.1)
        self.assertTrue(service.running)
        # Memory: no request was buffered past its limit, so once the silent
        # clients are gone the daemon's footprint is back near its baseline.
        for s in silent:
            s.close()
        await sleep(0.3)
        gc.collect()
        grown = _rss_bytes() - baseline
        self.assertLess(grown, 16 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB")
