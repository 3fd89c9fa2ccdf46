"""One daemon for a whole bench (``frappe_sites = ["*"]``) on real services.

The bench (tests/integration/bench_sites.py) has two sites with BTU, each with
its own MariaDB database and user and a schedule of the same name
(``TS-000001``), a third site whose database has no BTU tables, and an
``assets`` directory that is no site.  One daemon serves the two, through one
Redis connection to a redis-server of the test's own; real rq workers run both
sites' jobs.  The second site's MariaDB is reached through a proxy, so its
database can hang while the first site keeps enqueuing.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from btu_twisted.cli import main as btu
from btu_twisted.config import load_config
from btu_twisted.daemon.sites import SitesService
from tests.integration.bench_sites import (
    BENCH_ID,
    bench_path,
    make_bench,
    redis_queue,
    short_directory,
    site_database,
)
from tests.integration.daemon import run_worker, wait_for
from tests.integration.proxy import TcpProxy
from tests.integration.redis_servers import free_port
from tests.integration.support import MYSQL, write_config
from tests.integration.test_metrics import samples
from tests.jobfuncs import read_records

FAKE_FRAPPE = str(Path(__file__).resolve().parent.parent / "fixtures" / "builders_fake_frappe")
SITES = ("a.test", "b.test")
QUEUE = f"{BENCH_ID}:default"


class WholeBenchTests(TestCase):
    timeout = 120

    def log_lines(self) -> list[str]:
        from twisted.logger import formatEvent

        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return lines

    async def btu(self, *argv: str) -> tuple[int, str, str]:
        """Run the ``btu`` command in a thread (it blocks; the daemon runs in this reactor)."""
        out, err = io.StringIO(), io.StringIO()
        code = await deferToThread(btu, list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    async def bench(self, no_btu: bool = False, **values: Any) -> Bench:
        """a.test and b.test (its MariaDB behind a proxy), each with TS-000001 every
        second; with ``no_btu`` c.test, a Frappe site without the BTU app, and an
        ``assets`` directory; the daemon's TOML (``frappe_sites = ["*"]`` unless
        ``values`` says otherwise)."""
        redis, queue_url = await redis_queue(self)
        proxy = TcpProxy(reactor, MYSQL["port"], MYSQL["host"])
        proxy_port = await proxy.start()
        self.addCleanup(proxy.stop)
        sites = {}
        databases = {}
        for site in SITES:
            port = {"db_port": proxy_port} if site == "b.test" else {}
            databases[site], sites[site] = site_database(self, **port)
            databases[site].add_task("BTU-1", "myapp.tasks.hello", repr({"site": site}))
            databases[site].add_schedule("TS-000001", "BTU-1", "* * * * * * *")
        if no_btu:
            other, sites["c.test"] = site_database(self)
            other.execute("DROP TABLE `tabBTU Task Schedule`")
        bench = make_bench(bench_path(self), sites=sites,
                           common={"bench_id": BENCH_ID, "redis_queue": queue_url})
        if no_btu:
            (bench / "sites" / "assets").mkdir()
        config_path = bench.parent / "btu.toml"
        write_config(config_path, {
            "frappe_bench_path": str(bench), "frappe_sites": ["*"],
            "socket_path": os.path.join(short_directory(self), "{site}.sock"),
            # rq 2.12 workers here refuse Frappe v15's "site::uuid" ids.
            "frappe_job_id_style": "uuid", **values,
        })
        return Bench(redis, queue_url, proxy, bench, str(config_path), databases)

    async def test_one_daemon_serves_every_site_with_btu(self) -> None:
        """Both sites enqueue their own TS-000001 through one Redis connection; the site
        without BTU is skipped with one line; each socket answers for its site; metrics
        and the status page are per site; a hung database holds back its site only."""
        setup = await self.bench(no_btu=True, metrics_port=free_port())
        redis, queue_url, proxy, bench = setup.redis, setup.queue_url, setup.proxy, setup.path
        config_path, databases = setup.config_path, setup.databases
        config, warnings = load_config(config_path)
        lines = self.log_lines()
        fatal: list[str] = []
        service = SitesService(config, reactor, on_fatal=fatal.append, warnings=warnings)
        await service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        self.assertEqual(fatal, [])
        self.assertEqual(list(service.served), list(SITES))
        skipped = [line for line in lines if "skipped" in line]
        self.assertEqual(len(skipped), 1, skipped)
        self.assertIn("site c.test skipped", skipped[0])
        self.assertIn("no `tabBTU Task Schedule` table", skipped[0])
        for site in SITES:
            await wait_for(lambda s=site: service.site(s).timer.stats.enqueued >= 1, timeout=20)
            self.assertIs(service.site(site).redis, service.redis)  # one Redis connection
            self.assertIs(service.site(site).timer._wake._alarm, service.alarm)
        # One timer wake-up for all the sites: the reactor holds one alarm call at most,
        # at the earliest time any site's timer waits for.
        calls = [c for c in reactor.getDelayedCalls() if c.func == service.alarm._fire]
        self.assertLessEqual(len(calls), 1)
        waiting = service.alarm.pending()
        if waiting:
            self.assertEqual(len(calls), 1)
            self.assertEqual(service.alarm._target, waiting[0][0])
        self.assertEqual({key.decode() for key in redis.keys("btu_scheduler:*:owner")},
                         {f"btu_scheduler:{site}:owner" for site in SITES})

        # Each socket answers for its own site; `btu --site` picks the site.
        for site in SITES:
            code, out, err = await self.btu("--config", config_path, "--site", site,
                                            "status", "--json")
            self.assertEqual(code, 0, err)
            status = json.loads(out)
            self.assertEqual(status["site"], site)
            self.assertGreaterEqual(status["enqueued"], 1)
            # An every-second run is out of the set between its claim and its
            # replan (a SQL read and a PLAN call): ask again until it is listed.
            for _ in range(20):
                code, out, err = await self.btu("--config", config_path, "--site", site,
                                                "show-scheduled")
                self.assertEqual(code, 0, err)
                if "TS-000001" in out:
                    break
            self.assertIn("TS-000001", out)
        code, out, err = await self.btu("--config", config_path, "status")
        self.assertEqual(code, 2)
        self.assertEqual(err.count("\n"), 1, err)
        # The command does not look into the databases: it lists the bench's sites.
        self.assertIn("choose one with --site (a.test, b.test, c.test)", err)

        # One metrics port: samples labelled by site, a status page section per site.
        base = f"http://127.0.0.1:{service.metrics_service.port}"
        response = await treq.get(f"{base}/metrics", persistent=False)
        found = samples(await response.text())
        for site in SITES:
            key = ("btu_jobs_enqueued_total", (("queue", QUEUE), ("site", site)))
            self.assertGreaterEqual(found[key], 1, sorted(found))
            up = ("btu_dependency_up", (("service", "mariadb"), ("site", site)))
            self.assertEqual(found[up], 1.0)
        for _ in range(20):  # the same claim-to-replan window as above
            response = await treq.get(f"{base}/", persistent=False)
            page = await response.text()
            if page.count("<td class=\"name\">TS-000001</td>") == 2:
                break
        for i, site in enumerate(SITES, 1):
            self.assertIn(f"<section id=\"site-{i}\" class=\"site\"><h2>{site}</h2>", page)
        self.assertEqual(page.count("<td class=\"name\">TS-000001</td>"), 2)

        # b.test's database hangs: a.test keeps enqueuing.
        await proxy.pause("hold")
        a, b = service.site("a.test"), service.site("b.test")
        await wait_for(lambda: b.db.health.state == "down", timeout=30)
        before = a.timer.stats.enqueued
        await wait_for(lambda: a.timer.stats.enqueued >= before + 3, timeout=10)
        self.assertEqual(fatal, [])
        proxy.resume()
        await service.stopService()
        self.assertEqual(redis.keys("btu_scheduler:*:owner"), [])

        # Real rq workers run both sites' jobs, each with its own site and kwargs.
        records = str(bench.parent / "records.jsonl")
        os.environ["BTU_TEST_RECORD_FILE"] = records
        self.addCleanup(os.environ.pop, "BTU_TEST_RECORD_FILE", None)
        done = await run_worker(0, [QUEUE], extra_path=FAKE_FRAPPE, url=queue_url)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        ran = read_records(records)
        by_site = {site: [r for r in ran if r["kwargs"]["site"] == site] for site in SITES}
        for site in SITES:
            self.assertGreaterEqual(len(by_site[site]), 1, (done.stdout + done.stderr)[-3000:])
            self.assertEqual({r["kwargs"]["kwargs"]["site"] for r in by_site[site]}, {site})
            # The site's own redis_job_id is one of the jobs that ran for it.
            (job_id,), = databases[site].execute(
                "SELECT redis_job_id FROM `tabBTU Task Schedule` WHERE name = 'TS-000001'")
            self.assertIn(job_id, {r["job"]["id"] for r in by_site[site]})
        self.assertEqual(len(ran), len(by_site["a.test"]) + len(by_site["b.test"]))

    async def test_a_site_whose_database_hangs_at_start_is_skipped(self) -> None:
        """["*"] while one site's MariaDB hangs: that site is skipped with one line once
        the check's deadline passes, the reactor keeps turning, the other site is served."""
        setup = await self.bench()
        await setup.proxy.pause("hold")
        config, _ = load_config(setup.config_path)
        lines = self.log_lines()
        fatal: list[str] = []
        service = SitesService(config, reactor, on_fatal=fatal.append)
        turns = []
        ticking = LoopingCall(lambda: turns.append(reactor.seconds()))
        ticking.start(0.1)
        self.addCleanup(lambda: ticking.running and ticking.stop())
        await service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        ticking.stop()
        self.assertEqual(fatal, [])
        self.assertEqual(list(service.served), ["a.test"])
        (skipped,) = [line for line in lines if "skipped" in line]
        self.assertIn("site b.test skipped: its database", skipped)
        self.assertIn("cannot be used", skipped)
        # The check's 10 s deadline and the connection's own 10 s read timeout race:
        # either says the database hung.
        self.assertRegex(skipped, r"no answer within 10 s|\(2013, .*timed out")
        gaps = [b - a for a, b in itertools.pairwise(turns)]
        self.assertLess(max(gaps), 1.0, "the reactor was blocked while a database hung")
        await wait_for(lambda: setup.redis.llen(f"rq:queue:{QUEUE}") >= 1, timeout=20)
        setup.proxy.resume()
        await service.stopService()

    async def test_named_site_whose_database_is_down_at_start_stops_alone(self) -> None:
        """frappe_sites names both sites and b.test's MariaDB refuses connections: b.test
        stops with its one-line reason, a.test is served and enqueues, the process goes on."""
        setup = await self.bench(frappe_sites=list(SITES))
        await setup.proxy.pause("refuse")
        config, _ = load_config(setup.config_path)
        fatal: list[str] = []
        service = SitesService(config, reactor, on_fatal=fatal.append)
        await service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        await wait_for(lambda: "b.test" in service.failed, timeout=20)
        self.assertIn("cannot use MariaDB database", service.failed["b.test"])
        self.assertFalse(service.site("b.test").running)
        await wait_for(lambda: service.site("a.test").timer.stats.enqueued >= 2, timeout=20)
        self.assertEqual(fatal, [])
        self.assertEqual(setup.redis.keys("btu_scheduler:b.test:*"), [])
        await service.stopService()

    async def test_a_reload_serves_a_new_site_and_stops_a_dropped_one(self) -> None:
        """SIGHUP's reload after ``bench new-site d.test``: d.test is served (its
        socket, its jobs, its status page section) while a.test's service runs on
        untouched; after ``bench drop-site d.test`` the next reload stops it and
        gives its key prefix back."""
        setup = await self.bench(metrics_port=free_port())
        config, _ = load_config(setup.config_path)
        fatal: list[str] = []
        service = SitesService(config, reactor, on_fatal=fatal.append,
                               load_config=lambda: load_config(setup.config_path))
        await service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        a = service.site("a.test")
        db, values = site_database(self)
        db.add_task("BTU-1", "myapp.tasks.hello", repr({"site": "d.test"}))
        db.add_schedule("TS-000001", "BTU-1", "* * * * * * *")
        (setup.path / "sites" / "d.test").mkdir()
        (setup.path / "sites" / "d.test" / "site_config.json").write_text(json.dumps(values))
        summary = await service.reload()
        self.assertEqual(summary, "sites reloaded: 1 (d.test) started, 0 stopped; serving 3 "
                                  "(a.test, b.test, d.test); config unchanged")
        self.assertIs(service.site("a.test"), a)
        await wait_for(lambda: service.site("d.test").timer.stats.enqueued >= 1, timeout=20)
        code, out, err = await self.btu("--config", setup.config_path, "--site", "d.test",
                                        "status", "--json")
        self.assertEqual((code, json.loads(out)["site"]), (0, "d.test"), err)
        response = await treq.get(f"http://127.0.0.1:{service.metrics_service.port}/",
                                  persistent=False)
        self.assertIn("<h2>d.test</h2>", await response.text())

        (setup.path / "sites" / "d.test" / "site_config.json").unlink()
        summary = await service.reload()
        self.assertIn("0 started, 1 (d.test) stopped; serving 2 (a.test, b.test)", summary)
        self.assertEqual(setup.redis.keys("btu_scheduler:d.test:owner"), [])
        before = a.timer.stats.enqueued
        await wait_for(lambda: a.timer.stats.enqueued > before, timeout=10)
        self.assertEqual(fatal, [])
        await service.stopService()

    async def test_a_run_the_timer_was_not_told_of_is_found_by_the_bench_wide_look(self) -> None:
        """A bench's timers poll once a day; a run planned without the timer being
        told (as by another daemon of the site) is found by the one look at every
        site's next due run, at ``scheduler_polling_interval``."""
        setup = await self.bench(scheduler_polling_interval=2)
        setup.databases["a.test"].execute(
            "UPDATE `tabBTU Task Schedule` SET enabled = 0 WHERE name = 'TS-000001'")
        config, _ = load_config(setup.config_path)
        fatal: list[str] = []
        service = SitesService(config, reactor, on_fatal=fatal.append)
        await service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        a = service.site("a.test")
        self.assertEqual(a.timer._polling, 86400.0)
        a.planner._on_planned = lambda when: None  # the timer hears of no plan
        setup.databases["a.test"].execute(
            "UPDATE `tabBTU Task Schedule` SET enabled = 1, modified = NOW(6)"
            " WHERE name = 'TS-000001'")
        await wait_for(lambda: a.timer.stats.enqueued >= 1, timeout=20)
        self.assertGreaterEqual(service.due_watch.woken, 1)
        self.assertEqual(fatal, [])
        await service.stopService()


@dataclass
class Bench:
    redis: Any
    queue_url: str
    proxy: TcpProxy
    path: Path
    config_path: str
    databases: dict[str, Any]
