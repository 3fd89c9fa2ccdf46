"""Bench mode on real services: a three-line TOML, a bench directory, a site's own DB user.

The bench directory is built here as ``bench new-site`` leaves it (the JSON
part): the site's database belongs to its own MariaDB user with a password,
``redis_queue`` names the test Redis, and ``bench_id`` names the queues.  The
daemon reads all of that, plans the site's schedule and enqueues a Frappe job
that a real rq worker (with the stand-in ``frappe`` package) runs.

Each test has a redis-server of its own (``redis_servers``): the bench's
``redis_queue`` names it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.integration.daemon import make_service, run_worker, wait_for
from tests.integration.redis_servers import server_directory, start_server
from tests.integration.support import MYSQL, TestDatabase, admin_connection
from tests.jobfuncs import read_records
from tests.test_frappe_bench import make_bench

SITE = "site1.test"
FAKE_FRAPPE = str(Path(__file__).resolve().parent.parent / "fixtures" / "builders_fake_frappe")


class BenchModeDaemonTests(TestCase):
    timeout = 90

    async def redis_queue(self) -> tuple[Any, str]:
        """A redis-server of this test's own: a client, and its URL as the bench writes it."""
        server = await start_server(self, server_directory(self), "queue")
        client = server.client()
        self.addCleanup(client.close)
        return client, f"redis://127.0.0.1:{server.port}"

    def site_user(self, database: str) -> tuple[str, str]:
        """A MariaDB user owning ``database``, as bench creates one per site."""
        user, password = "btu_b_" + secrets.token_hex(4), secrets.token_hex(12)
        conn = admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
                cur.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO %s@'%%'", (user,))
        finally:
            conn.close()
        self.addCleanup(self._drop_user, user)
        return user, password

    @staticmethod
    def _drop_user(user: str) -> None:
        conn = admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        finally:
            conn.close()

    async def test_three_line_toml_runs_a_site(self) -> None:
        redis, redis_queue = await self.redis_queue()
        db = TestDatabase(load_samples=False)
        self.addCleanup(db.drop)
        db.add_task("BTU-BENCH", "myapp.tasks.hello", repr({"n": 1}))
        db.add_schedule("TS-BENCH", "BTU-BENCH", "* * * * * * *")
        user, password = self.site_user(db.name)
        tmp = Path(self.mktemp()).resolve()
        bench = make_bench(
            tmp / "frappe-bench",
            common={"bench_id": "bench-it", "webserver_port": 8000, "redis_queue": redis_queue},
            sites={SITE: {"db_name": db.name, "db_user": user, "db_password": password,
                          "db_host": MYSQL["host"], "db_port": MYSQL["port"],
                          "rq_results_ttl": 120}},
        )
        short = tempfile.mkdtemp(dir="/tmp", prefix="btubench")  # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, short, True)
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
        done = await run_worker(0, ["bench-it:default"], extra_path=FAKE_FRAPPE, url=redis_queue)
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
        redis, redis_queue = await self.redis_queue()
        sites = {}
        for site in ("a.test", "b.test"):
            db = TestDatabase(load_samples=False)
            self.addCleanup(db.drop)
            db.add_task("BTU-1", "myapp.tasks.hello", repr({"site": site}))
            db.add_schedule("TS-0001", "BTU-1", "0 0 1 1 *")  # planned, far from due
            user, password = self.site_user(db.name)
            sites[site] = {"db_name": db.name, "db_user": user, "db_password": password,
                           "db_host": MYSQL["host"], "db_port": MYSQL["port"]}
        tmp = Path(self.mktemp()).resolve()
        bench = make_bench(tmp / "frappe-bench", sites=sites,
                           common={"bench_id": "bench-it", "redis_queue": redis_queue})
        short = tempfile.mkdtemp(dir="/tmp", prefix="btubench")
        self.addCleanup(shutil.rmtree, short, True)

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

