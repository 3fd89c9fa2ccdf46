"""The soak's moving parts: its private database, the consumer that empties the
queues, the churn of schedules, and the readings of the daemon's process.

Apart from :mod:`bench.soak`, which runs them and judges the result.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import threading
import time
from collections import defaultdict
from typing import Any

import pymysql
import redis

from bench.fixtures import FUNCTION, ROOT, TASK
from bench.idle import proc_sample
from bench.private_services import PrivateMariaDB, PrivateRedis
from tests.integration import support

SCHEMA = ROOT / "tests" / "fixtures" / "frappe_schema.sql"
DATABASE = "btu_soak"

SCHEDULE_SET = "btu_scheduler:task_execution_times"
MEMBER_INDEX = "btu_scheduler:schedule_members"
LAST_ENQUEUED = "btu_scheduler:last_enqueued"
RECENT_SECS = 3600  # btu_twisted.store.schedule_store.RECENT_SECS (the bench does not import the daemon)

EVERY_SECOND = "* * * * * * *"
EVERY_MINUTE = "* * * * *"
CORE_SECONDS = 50
CORE_MINUTES = 10
CHURN_EVERY = 10.0        # seconds between churn rounds
DRAIN_EVERY = 0.5         # seconds between consumer drains
SAMPLE_EVERY = 10.0       # seconds between /proc readings
DOWN_SECS = 5.0           # how long each restarted service stays down
# (fraction of the run, service) of each restart
RESTARTS = ((0.15, "redis"), (0.35, "mariadb"), (0.55, "redis"), (0.75, "mariadb"))
CHURN_STOPS = 0.9         # no churn in the last 10 %: what is left then is left behind


class _PlainUnpickler(pickle.Unpickler):
    """``meta`` is a dict of str/int: a pickle naming any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"meta names {module}.{name}")


def _meta(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = _PlainUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError):
        return None
    return value if isinstance(value, dict) else None


# -- the site's database ---------------------------------------------------------

class SoakDatabase:
    """The Frappe tables in the private MariaDB, one task, the schedules."""

    def __init__(self, server: PrivateMariaDB) -> None:
        self.server = server
        conn = server.connection(client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4 "
                            "COLLATE utf8mb4_unicode_ci")
                cur.execute(f"USE `{DATABASE}`")
                cur.execute(SCHEMA.read_text())
                while cur.nextset():
                    pass
                cur.execute("DELETE FROM `tabBTU Task Schedule`")
                cur.execute("DELETE FROM `tabBTU Task`")
                cur.execute("DELETE FROM `tabSingles` WHERE doctype = 'BTU Configuration'"
                            " AND field = 'cron_time_zone'")
                cur.execute("INSERT INTO `tabSingles` (doctype, field, value) VALUES"
                            " ('BTU Configuration', 'cron_time_zone', 'UTC')")
                cur.execute(
                    "INSERT INTO `tabBTU Task` (name, docstatus, desc_short, function_string,"
                    " arguments, queue_name, max_task_duration, modified)"
                    " VALUES (%s, 1, %s, %s, %s, 'default', 600, NOW(6))",
                    (TASK, "Soak no-op", FUNCTION, "{'source': 'btu soak'}"))
        finally:
            conn.close()

    def execute(self, sql: str, params: Any = None, many: bool = False) -> list[tuple[Any, ...]]:
        conn = self.server.connection(DATABASE)
        try:
            with conn.cursor() as cur:
                if many:
                    cur.executemany(sql, params)
                else:
                    cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def insert(self, rows: list[tuple[str, str, str]]) -> None:
        """(name, cron, queue) rows, enabled, ``modified`` = now."""
        self.execute(
            "INSERT INTO `tabBTU Task Schedule` (name, task, cron_string, enabled, queue_name,"
            " task_description, creation, modified) VALUES (%s, %s, %s, 1, %s, %s, NOW(6), NOW(6))",
            [(name, TASK, cron, queue, TASK) for name, cron, queue in rows], many=True)

    def names(self) -> tuple[set[str], set[str]]:
        """(every schedule name, enabled ones)."""
        rows = self.execute("SELECT name, enabled FROM `tabBTU Task Schedule`")
        return {r[0] for r in rows}, {r[0] for r in rows if r[1]}


# -- the consumer: reads every job, then drops it ------------------------------------

class Consumer:
    """Drains the rq queues, remembering (schedule, second) -> job ids."""

    def __init__(self, server: PrivateRedis) -> None:
        self.client = server.client()
        self.lock = threading.Lock()
        self.runs: dict[tuple[str, int], set[str]] = defaultdict(set)
        self.enqueued_at: dict[str, float] = {}
        self.jobs = 0
        self.unreadable = 0
        self.drains = 0
        self.failed_drains = 0
        self.redis_memory: list[tuple[float, int]] = []

    def drain(self) -> int:
        r = self.client
        taken = 0
        for queue in sorted(r.smembers("rq:queues")):
            ids = r.lrange(queue, 0, -1)
            if not ids:
                continue
            pipe = r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(b"rq:job:" + job_id, "meta", "enqueued_at")
            for job_id, (meta_raw, at_raw) in zip(ids, pipe.execute(), strict=True):
                job = job_id.decode()
                meta = _meta(meta_raw)
                if meta is None or "task_schedule" not in meta or "scheduled_time" not in meta:
                    self.unreadable += 1
                    continue
                self.runs[(str(meta["task_schedule"]), int(meta["scheduled_time"]))].add(job)
                at = support.parse_rq_time(at_raw)
                if at is not None:
                    self.enqueued_at[job] = at
            pipe = r.pipeline(transaction=False)
            pipe.ltrim(queue, len(ids), -1)   # rq pushes on the right: drop what was read
            pipe.delete(*[b"rq:job:" + job_id for job_id in ids])
            pipe.execute()
            taken += len(ids)
        self.jobs += taken
        self.drains += 1
        return taken

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self.lock:
                try:
                    self.drain()
                    if self.drains % 20 == 0:
                        self.redis_memory.append(
                            (time.time(), int(self.client.info("memory")["used_memory"])))
                except redis.RedisError:
                    self.failed_drains += 1
            stop.wait(DRAIN_EVERY)


# -- churn: schedules created, disabled and deleted ------------------------------------

class Churn:
    def __init__(self, db: SoakDatabase) -> None:
        self.db = db
        self.lock = threading.Lock()
        self.serial = 0
        self.alive: list[str] = []      # enabled churn schedules, oldest first
        self.disabled: list[str] = []
        self.deleted: set[str] = set()
        self.inserted = 0
        self.rounds = 0
        self.failed_rounds = 0

    def round(self) -> None:
        new = []
        for cron, queue in ((EVERY_SECOND, "default"), (EVERY_SECOND, "default"),
                            (EVERY_MINUTE, "short")):
            self.serial += 1
            new.append((f"TS-C{self.serial:05d}", cron, queue))
        self.db.insert(new)
        self.inserted += len(new)
        self.alive += [name for name, _, _ in new]
        if len(self.alive) > 6:
            victim = self.alive.pop(0)
            self.db.execute("UPDATE `tabBTU Task Schedule` SET enabled = 0, modified = NOW(6)"
                            " WHERE name = %s", (victim,))
            self.disabled.append(victim)
        doomed = []
        if self.disabled:
            doomed.append(self.disabled.pop(0))
        if len(self.alive) > 6:
            doomed.append(self.alive.pop(0))
        if doomed:
            self.db.execute("DELETE FROM `tabBTU Task Schedule` WHERE name IN %s", (doomed,))
            self.deleted.update(doomed)
        self.rounds += 1

    def run(self, stop: threading.Event, until: float) -> None:
        while not stop.is_set() and time.time() < until:
            with self.lock:
                try:
                    self.round()
                except pymysql.MySQLError:
                    self.failed_rounds += 1   # MariaDB is being restarted
                    self._resync()
            stop.wait(CHURN_EVERY)

    def _resync(self) -> None:
        """After a failed round, believe the database, not our lists."""
        try:
            everything, enabled = self.db.names()
        except pymysql.MySQLError:
            return
        self.alive = [n for n in self.alive if n in enabled]
        self.disabled = [n for n in self.disabled if n in everything and n not in enabled]
        mine = {f"TS-C{i:05d}" for i in range(1, self.serial + 1)}
        self.deleted = {n for n in mine if n not in everything}


# -- the daemon ---------------------------------------------------------------------

def control_request(path: str, request_type: str, content: Any = None,
                    timeout: float = 10.0) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps({"request_type": request_type,
                              "request_content": content}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    text = buf.decode(errors="replace").strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return -1


def sampler(pid: int, t0: float, samples: list[dict[str, Any]], stop: threading.Event) -> None:
    next_at = t0
    while not stop.is_set():
        try:
            s = proc_sample(pid)
        except OSError:
            return
        samples.append({"t": round(s["t"] - t0, 2), "rss_mib": round(s["rss_mib"], 2),
                        "cpu_secs": round(s["cpu_secs"], 2), "fds": _fds(pid),
                        "threads": _threads(pid)})
        next_at += SAMPLE_EVERY
        stop.wait(max(0.0, next_at - time.time()))


# -- the run --------------------------------------------------------------------------

def wait_planned(r: redis.Redis, expected: set[str], limit: float) -> float | None:
    """Seconds until every name in ``expected`` has a member (None: not within ``limit``)."""
    t = time.time()
    while time.time() - t < limit:
        try:
            names = {m.decode().rsplit("|", 1)[0] for m in r.zrange(SCHEDULE_SET, 0, -1)}
            if expected <= names:
                return time.time() - t
        except redis.RedisError:
            pass
        time.sleep(0.05)
    return None


def _mid_second() -> None:
    """Sleep to the middle of a second: every-second runs are enqueued at its start."""
    frac = time.time() % 1.0
    time.sleep((1.5 - frac) % 1.0)
