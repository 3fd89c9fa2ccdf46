"""A hosting bench for :mod:`bench.hosting`: N sites, each with its own database and user.

As ``bench new-site`` leaves them (tests/integration/bench_sites.py, here
made in bulk): a database per site with Frappe's BTU tables (copied with
``CREATE TABLE ... LIKE`` from one template made from the schema the tests
use), a MariaDB user per site owning it, one BTU task and ``schedules``
schedules per site, and the bench directory whose ``sites/*/site_config.json``
name them and whose ``redis_queue`` names the case's own redis-server.
Every database is ``btu_host_<tag>_*`` (not ``btu_bench_*``: ``bench.run`` drops those as leftovers) and every user ``btu_h_<tag>_*``;
:meth:`HostingBench.drop` removes what this run made, and nothing else.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from bench.fixtures import FUNCTION, TASK
from tests.integration.support import MYSQL, TestDatabase, admin_connection
from tests.test_frappe_bench import make_bench

__all__ = ["BENCH_ID", "HostingBench"]

BENCH_ID = "hosting"


class HostingBench:
    def __init__(self, root: Path, sites: int, schedules: int, cron: str, redis_url: str) -> None:
        self.tag = secrets.token_hex(3)
        self.root = root
        self.names = [f"s{i:04d}.test" for i in range(sites)]
        self.databases: dict[str, str] = {}
        self.users: dict[str, str] = {}
        self.schedules = [f"TS-{k:06d}" for k in range(schedules)]
        self._template = TestDatabase(load_samples=False, prefix=f"btu_host_{self.tag}_t")
        try:
            site_configs = self._make_sites(cron)
        except BaseException:
            self.drop()
            raise
        self.path = make_bench(root / "frappe-bench", sites=site_configs,
                               common={"bench_id": BENCH_ID, "redis_queue": redis_url})

    def _make_sites(self, cron: str) -> dict[str, dict[str, Any]]:
        configs: dict[str, dict[str, Any]] = {}
        conn = admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SHOW TABLES FROM `{self._template.name}`")
                tables = [row[0] for row in cur.fetchall()]
                for i, site in enumerate(self.names):
                    db = f"btu_host_{self.tag}_{i:04d}"
                    user, password = f"btu_h_{self.tag}_{i:04d}", secrets.token_hex(10)
                    cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4 "
                                "COLLATE utf8mb4_unicode_ci")
                    self.databases[site] = db
                    for table in tables:
                        cur.execute(f"CREATE TABLE `{db}`.`{table}` "
                                    f"LIKE `{self._template.name}`.`{table}`")
                    cur.execute(f"INSERT INTO `{db}`.`tabSingles` (doctype, field, value) "
                                "VALUES ('BTU Configuration', 'cron_time_zone', 'UTC')")
                    cur.execute(f"INSERT INTO `{db}`.`tabBTU Task` (name, docstatus, desc_short,"
                                " function_string, arguments, queue_name, max_task_duration)"
                                " VALUES (%s, 1, 'Benchmark no-op', %s, %s, 'default', 600)",
                                (TASK, FUNCTION, repr({"site": site})))
                    cur.executemany(
                        f"INSERT INTO `{db}`.`tabBTU Task Schedule` (name, task, cron_string,"
                        " enabled, queue_name, task_description, modified)"
                        " VALUES (%s, %s, %s, 1, 'default', %s, NOW(6))",
                        [(name, TASK, cron, TASK) for name in self.schedules])
                    cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
                    self.users[site] = user
                    cur.execute(f"GRANT ALL PRIVILEGES ON `{db}`.* TO %s@'%%'", (user,))
                    configs[site] = {"db_name": db, "db_user": user, "db_password": password,
                                     "db_host": MYSQL["host"], "db_port": MYSQL["port"]}
        finally:
            conn.close()
        return configs

    def set_cron(self, cron: str) -> None:
        """Every schedule of every site gets ``cron``, by plain SQL (``modified`` bumped,
        no socket request): what the change feed must notice by itself."""
        conn = admin_connection()
        try:
            with conn.cursor() as cur:
                for db in self.databases.values():
                    cur.execute(f"UPDATE `{db}`.`tabBTU Task Schedule`"
                                " SET cron_string = %s, modified = NOW(6)", (cron,))
        finally:
            conn.close()

    def drop(self) -> None:
        conn = admin_connection()
        try:
            with conn.cursor() as cur:
                for db in self.databases.values():
                    cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
                for user in self.users.values():
                    cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        finally:
            conn.close()
        self._template.drop()
