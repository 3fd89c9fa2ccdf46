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

import json
import secrets
from pathlib import Path
from typing import Any

from bench.fixtures import FUNCTION, TASK
from tests.integration.support import MYSQL, TestDatabase, admin_connection
from tests.test_frappe_bench import make_bench

__all__ = ["BENCH_ID", "HostingBench", "zset_key"]

BENCH_ID = "hosting"


def zset_key(site: str) -> str:
    return f"btu_scheduler:{site}:task_execution_times"


class HostingBench:
    def __init__(self, root: Path, sites: int, schedules: int, cron: str, redis_url: str) -> None:
        self.tag = secrets.token_hex(3)
        self.root = root
        self.names = [f"s{i:04d}.test" for i in range(sites)]
        self.databases: dict[str, str] = {}
        self.users: dict[str, str] = {}
        self.schedules = [f"TS-{k:06d}" for k in range(schedules)]
        #: Every site ever made, served or not (``names`` is the bench's sites now).
        self._made = 0
        self._template = TestDatabase(load_samples=False, prefix=f"btu_host_{self.tag}_t")
        try:
            site_configs = self._make_sites(self.names, [cron] * schedules)
        except BaseException:
            self.drop()
            raise
        self.path = make_bench(root / "frappe-bench", sites=site_configs,
                               common={"bench_id": BENCH_ID, "redis_queue": redis_url})

    def add_sites(self, count: int, crons: list[str]) -> list[str]:
        """``bench new-site`` ``count`` times: databases, users, rows, then the site
        directories (the daemon sees them at its next SIGHUP); ``crons`` per schedule."""
        names = [f"s{i:04d}.test" for i in range(self._made, self._made + count)]
        for site, config in self._make_sites(names, crons).items():
            (self.path / "sites" / site).mkdir()
            (self.path / "sites" / site / "site_config.json").write_text(json.dumps(config))
        self.names += names
        return names

    def remove_sites(self, names: list[str]) -> None:
        """The end of ``bench drop-site``: the site's directory moves to
        ``archived_sites`` (its database stays until :meth:`drop`, so its runs can
        only stop because the daemon stopped the site)."""
        archive = self.path / "archived_sites"
        archive.mkdir(exist_ok=True)
        for site in names:
            (self.path / "sites" / site).rename(archive / site)
        self.names = [site for site in self.names if site not in names]

    def _make_sites(self, names: list[str], crons: list[str]) -> dict[str, dict[str, Any]]:
        configs: dict[str, dict[str, Any]] = {}
        conn = admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SHOW TABLES FROM `{self._template.name}`")
                tables = [row[0] for row in cur.fetchall()]
                for site in names:
                    i = self._made
                    self._made += 1
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
                        [(name, TASK, cron, TASK)
                         for name, cron in zip(self.schedules, crons, strict=True)])
                    cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
                    self.users[site] = user
                    cur.execute(f"GRANT ALL PRIVILEGES ON `{db}`.* TO %s@'%%'", (user,))
                    configs[site] = {"db_name": db, "db_user": user, "db_password": password,
                                     "db_host": MYSQL["host"], "db_port": MYSQL["port"]}
        finally:
            conn.close()
        return configs

    def set_cron(self, cron: str, schedule: str | None = None) -> None:
        """Every schedule (or ``schedule``) of every site gets ``cron``, by plain SQL
        (``modified`` bumped, no socket request): what the change feed must notice
        by itself."""
        only = "" if schedule is None else " WHERE name = %s"
        conn = admin_connection()
        try:
            with conn.cursor() as cur:
                for site in self.names:
                    cur.execute(f"UPDATE `{self.databases[site]}`.`tabBTU Task Schedule`"
                                f" SET cron_string = %s, modified = NOW(6){only}",
                                (cron,) if schedule is None else (cron, schedule))
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
