"""A Frappe bench built by the tests: its directory, each site's database and MariaDB user,
and the redis-server its ``redis_queue`` names.

As ``bench new-site`` leaves a bench (the JSON part): each site's database
belongs to a MariaDB user of its own with a password, ``redis_queue`` names a
redis-server of the test's own (``redis_servers``), ``bench_id`` names the
queues.  Used by the bench-mode tests of one site and of many sites.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import unittest
from pathlib import Path
from typing import Any

from tests.integration.redis_servers import server_directory, start_server
from tests.integration.support import MYSQL, TestDatabase, admin_connection
from tests.test_frappe_bench import make_bench

__all__ = ["BENCH_ID", "bench_path", "make_bench", "redis_queue", "short_directory",
           "site_database", "site_user"]

BENCH_ID = "bench-it"


async def redis_queue(case: unittest.TestCase) -> tuple[Any, str]:
    """A redis-server of the test's own: a client, and its URL as the bench writes it."""
    server = await start_server(case, server_directory(case), "queue")
    client = server.client()
    case.addCleanup(client.close)
    return client, f"redis://127.0.0.1:{server.port}"


def site_user(case: unittest.TestCase, database: str) -> tuple[str, str]:
    """A MariaDB user owning ``database``, as bench creates one per site; dropped after."""
    user, password = "btu_b_" + secrets.token_hex(4), secrets.token_hex(12)
    conn = admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO %s@'%%'", (user,))
    finally:
        conn.close()
    case.addCleanup(_drop_user, user)
    return user, password


def _drop_user(user: str) -> None:
    conn = admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
    finally:
        conn.close()


def site_database(case: unittest.TestCase, **site: Any) -> tuple[TestDatabase, dict[str, Any]]:
    """A new site's database (BTU tables, no rows) and user, and its site_config.json
    values; ``site`` adds or overrides keys (``db_port`` to go through a proxy)."""
    db = TestDatabase(load_samples=False)
    case.addCleanup(db.drop)
    user, password = site_user(case, db.name)
    return db, {"db_name": db.name, "db_user": user, "db_password": password,
                "db_host": MYSQL["host"], "db_port": MYSQL["port"], **site}


def short_directory(case: unittest.TestCase) -> str:
    """A directory for sockets (AF_UNIX paths are short), removed after the test."""
    short = tempfile.mkdtemp(dir="/tmp", prefix="btubench")
    case.addCleanup(shutil.rmtree, short, True)
    return short


def bench_path(case: unittest.TestCase) -> Path:
    """Where the test's bench directory goes (``make_bench`` creates it)."""
    return Path(case.mktemp()).resolve() / "frappe-bench"
