"""Bench mode on real services: a three-line TOML, a bench directory, a site's own DB user.

The bench directory is built as ``bench new-site`` leaves it (the JSON part,
tests/integration/bench_sites.py): the site's database belongs to its own
MariaDB user with a password, ``redis_queue`` names the test Redis, and
``bench_id`` names the queues.  The daemon reads all of that, plans the site's schedule and enqueues a Frappe job
that a real rq worker (with the stand-in ``frappe`` package) runs.

Each test has a redis-server of its own (``redis_servers``): the bench's
``redis_queue`` names it.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.integration.bench_sites import (
    BENCH_ID,
    bench_path,
    make_bench,
    redis_queue,
    short_directory,
    site_database,
)
from tests.integration.daemon import make_service, run_worker, wait_for
from tests.jobfuncs import read_records

SITE = "site1.test"
FAKE_FRAPPE = str(Path(__file__).resolve().parent.parent / "fixtures" / "builders_fake_frappe")


class BenchModeDaemonTests(TestCase):
    timeout = 90

    async def test_three_line_toml_runs_a_site(self) -> None:
        redis, queue_url = await redis_queue(self)
        db, site = site_database(self, rq_results_ttl=120)
        db.add_task("BTU-BENCH", "myapp.tasks.hello", repr({"n": 1}))
        db.add_schedule("TS-BENCH", "BTU-BENCH", "* * * * * * *")
        bench = make_bench(
            bench_path(self),
            common={"bench_id": BENCH_ID, "webserver_port": 8000, "redis_queue": queue_url},
            sites={SITE: site},
        )
        tmp = bench.parent
        short = short_directory(self)
        # Three lines, and a fourth because the worker here runs rq 2.12, which
        # refuses Frappe v15's "site::uuid" ids (the default; rq 1.15 workers
        # take them, see test_rq_compat).
        values = {"frappe_bench_path": str(bench), "frappe_site_name": SITE,
                  "socket_path": os.path.join(short, "btu.sock"), "frappe_job_id_style": "uuid"}
        service, fatal = make_service(values)
        await service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        self.assertEqual(fatal, [])
        queue = "rq:queue:bench-it:default"
        await wait_for(lambda: redis.llen(queue) >= 1, timeout=20)
        await service.stopService()

        job_id = redis.lindex(queue, 0).decode()
        self.assertRegex(job_id, r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        job = redis.hgetall(f"rq:job:{job_id}")
        self.assertEqual(job[b"origin"], b"bench-it:default")
        self.assertEqual(job[b"result_ttl"], b"120")
        records = str(tmp / "records.jsonl")
        os.environ["BTU_TEST_RECORD_FILE"] = records
        self.addCleanup(os.environ.pop, "BTU_TEST_RECORD_FILE", None)
        done = await run_worker(0, ["bench-it:default"], extra_path=FAKE_FRAPPE, url=queue_url)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        ran = read_records(records)
        self.assertGreaterEqual(len(ran), 1, (done.stdout + done.stderr)[-3000:])
        calls = [r["kwargs"] for r in ran]
        self.assertEqual({(c["site"], c["method"]) for c in calls}, {(SITE, "myapp.tasks.hello")})
        self.assertEqual(calls[0]["kwargs"], {"n": 1})
        self.assertEqual(ran[0]["job"]["origin"], "bench-it:default")
    async def test_two_sites_of_a_bench_keep_to_their_own_keys(self) -> None:
        """Both sites number their schedules TS-0001: each daemon plans only its own, in
        its own prefix; a daemon pointed at the other site's prefix refuses to start."""
        redis, queue_url = await redis_queue(self)
        sites = {}
        for site in ("a.test", "b.test"):
            db, sites[site] = site_database(self)
            db.add_task("BTU-1", "myapp.tasks.hello", repr({"site": site}))
            db.add_schedule("TS-0001", "BTU-1", "0 0 1 1 *")  # planned, far from due
        bench = make_bench(bench_path(self), sites=sites,
                           common={"bench_id": BENCH_ID, "redis_queue": queue_url})
        short = short_directory(self)

        def values(site: str, **more: str) -> dict[str, str]:
            return {"frappe_bench_path": str(bench), "frappe_site_name": site,
                    "socket_path": os.path.join(short, f"{site}.sock"), **more}

        services = []
        for site in sites:
            service, fatal = make_service(values(site))
            await service.startService()
            self.addCleanup(lambda s=service: s.running and s.stopService())
            self.assertEqual(fatal, [])
            services.append(service)
        for site in sites:
            members = f"btu_scheduler:{site}:task_execution_times"
            await wait_for(lambda m=members: redis.zcard(m) == 1, timeout=20)
        owner = redis.get("btu_scheduler:a.test:owner").decode()
        self.assertEqual(owner, f"{sites['a.test']['db_name']} a.test")
        intruder, fatal = make_service(values("b.test", redis_key_prefix="btu_scheduler:a.test:",
                                              socket_path=os.path.join(short, "c.sock")))
        await intruder.startService()
        await intruder.stopService()  # what the fatal exit does
        self.assertEqual(len(fatal), 1, fatal)
        self.assertIn("belong to the daemon of site 'a.test'", fatal[0])
        for service in services:
            await service.stopService()
        self.assertEqual(redis.keys("btu_scheduler:*:owner"), [])

