"""Jobs written by the daemon are run to completion by the rq workers Frappe sites run.

The daemon writes each job hash with the rq it installs (rq 2.x,
``Job.to_dict()``), but a site's ``bench worker`` runs the rq its Frappe
release pins (COMPAT.md section 7): rq 1.15.x on v15, rq 2.6.x on develop.
For each of those, and for the daemon's own rq, and for each job builder,
a job goes the daemon's real path:

    make_builder(config).build(row, when) -> ScheduleStore.plan -> ScheduleStore.claim
    (the CLAIM script over a RedisGateway: hash + enqueued_at, RPUSH, SADD rq:queues)

then one burst ``SimpleWorker`` of that rq version, in its own venv (see
``tests/integration/rq_venvs.py``), runs it as a child process.  A case passes
when that worker ran the function the builder named, with the right keyword
arguments, inside a job whose id, origin, timeout and meta are ours; the job's
hash says ``finished``, as the worker's rq reads it back; the failed registry
and the queue are empty.

``frappe_site`` jobs run with a stand-in ``frappe`` package on the worker's
path (``tests/fixtures/builders_fake_frappe``); ``frappe`` jobs take their pickle
from a twisted.web stand-in of the site's ``get_pickled_task`` endpoint.  Each
worker gets the ``frappe_job_id_style`` meant for it: ``v15`` (``site::uuid``)
on rq 1.15.1, ``develop`` (``site||uuid``) on rq 2.6.1, ``uuid`` on the
daemon's own rq (2.12 and later accept no ``:``, ``|`` or ``.``).  A finished
``frappe_site`` job then expires after Frappe's 600 s, and a failing one stays
Frappe's 7 days and has the worker call ``truncate_failed_registry``.

Redis database 7, held with a machine-wide lock for each test.  The pinned-rq
venvs are made on first use (network: PyPI) and reused; without PyPI these
tests fail, unless ``BTU_SKIP_RQ_MATRIX=1``, which skips them.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rq.utils import utcformat
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from btu_twisted.jobs.builders import BuiltJob, make_builder
from btu_twisted.records import ScheduleRow
from btu_twisted.store.gateway import RedisGateway
from btu_twisted.store.schedule_store import CLAIMED, Claim, ScheduleStore, member_for
from tests.integration import rq_venvs
from tests.integration.support import REDIS_HOST, REDIS_PORT, clean_redis, exclusive_redis_db

DB = 7  # 10-12 belong to bench/
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}"
REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_FRAPPE = REPO_ROOT / "tests" / "fixtures" / "builders_fake_frappe"
RECORD_FUNC = "tests.jobfuncs.record"
EXECUTE_JOB = "frappe.utils.background_jobs.execute_job"
PREFIX = "compat-bench:"  # as Frappe v14+ names its queues: <bench_id>:<queue>
WORKER_DEADLINE_SECS = 60


def schedule_row(name: str, **values: Any) -> ScheduleRow:
    """A schedule row as the SQL layer returns it, with ``values`` filled in."""
    row: dict[str, Any] = {
        "name": name,
        "task": "BTU-COMPAT",
        "enabled": True,
        "cron_string": "* * * * *",
        "queue_name": "short",
        "argument_overrides": None,
        "task_description": "rq compatibility task",
        "schedule_description": "every minute",
        "cron_time_zone": "UTC",
        "function_string": RECORD_FUNC,
        "task_arguments": None,
        "max_task_duration": 321,
        "task_queue_name": "long",
        "desc_short": "Compat",
    }
    row.update(values)
    return ScheduleRow(**row)


def builder_config(kind: str, **values: Any) -> SimpleNamespace:
    """The configuration attributes make_builder reads."""
    config: dict[str, Any] = {
        "job_builder": kind,
        "rq_queue_prefix": PREFIX,
        "frappe_site_name": "compat.example.com",
        "frappe_user": "scheduler@example.com",
        "webserver_ip": "127.0.0.1",
        "webserver_port": None,
        "webserver_scheme": "http",
        "webserver_host_header": None,
        "webserver_token": "token compat:secret",
        "webserver_ca_file": None,
        "webserver_timeout_secs": 5.0,
        "frappe_job_id_style": "v15",
        "result_ttl": None,
        "failure_ttl": None,
    }
    config.update(values)
    return SimpleNamespace(**config)


class PickleSite(Resource):
    """BTU's ``get_pickled_task`` endpoint: answers every POST with one pickle as byte values."""

    isLeaf = True

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload
        self.bodies: list[dict[str, Any]] = []

    def render_POST(self, request: Request) -> bytes:
        self.bodies.append(json.loads(request.content.read()))
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"message": list(self.payload)}).encode()


#: Each id style as a pattern, with the site of builder_config().
ID_PATTERNS = {
    "v15": r"\Acompat\.example\.com::[0-9a-f-]{36}\Z",
    "develop": r"\Acompat\.example\.com\|\|[0-9a-f-]{36}\Z",
    "uuid": r"\A[0-9a-f-]{36}\Z",
}
#: The stand-in execute_job raises for this method (tests/fixtures/builders_fake_frappe).
FAILING_METHOD = "myapp.tasks.fails"
FRAPPE_RESULT_TTL = 600
FRAPPE_FAILURE_TTL = 604800
#: Slack for the TTL checks: the worker may start long after the build under load.
TTL_SLACK_SECS = 3600


#: Run by a worker's interpreter: what ``frappe.enqueue`` (v15 and develop) has that
#: rq's Queue write for execute_job, printed as JSON (``data`` as its pickle, in hex).
FRAPPE_ENQUEUE_SCRIPT = """
import json, sys, zlib
import redis
from rq import Queue
from rq.job import Callback
url, queue, job_id, kwargs, timeout = sys.argv[1:6]
connection = redis.Redis.from_url(url)
Queue(queue, connection=connection).enqueue_call(
    "frappe.utils.background_jobs.execute_job",
    on_success=None,
    on_failure=Callback(func="frappe.utils.background_jobs.truncate_failed_registry"),
    timeout=int(timeout),
    kwargs=json.loads(kwargs),
    at_front=False,
    failure_ttl=604800,
    result_ttl=600,
    job_id=job_id,
)
stored = connection.hgetall("rq:job:" + job_id)
data = zlib.decompress(stored.pop(b"data"))
out = {key.decode(): value.decode() for key, value in stored.items()}
out["data"] = data.hex()
print(json.dumps(out))
"""


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _WorkerMatrix:
    """The three builders against one worker rq version; mixed into a TestCase per version.

    ``pin`` None means the rq installed with the daemon, run by this interpreter.
    """

    pin: rq_venvs.RqPin | None = None
    #: The frappe_job_id_style meant for this worker's rq.
    frappe_id_style = "uuid"
    # The first test of a pinned version may make its venv (PyPI downloads).
    timeout = 600

    # -- fixtures ---------------------------------------------------------------

    async def setUp(self) -> None:
        self.python, self.venv_error = await self.worker_python()
        await exclusive_redis_db(self, DB)  # registered first among cleanups: released last
        self.redis = clean_redis(self, DB)
        self.gateway = RedisGateway(reactor, REDIS_HOST, REDIS_PORT, database=DB)
        self.gateway.start()
        self.addCleanup(self.gateway.stop)
        self.store = ScheduleStore(self.gateway)
        self.records = Path(self.mktemp()).resolve()
        self.records.parent.mkdir(parents=True, exist_ok=True)

    async def worker_python(self) -> tuple[str, str | None]:
        """This case's worker interpreter (ours, or the pinned venv's, made if needed),
        or why the venv could not be made: the test body fails with that reason (a
        FAIL, not an ERROR in set-up, and never a silent skip)."""
        if self.pin is None:
            return sys.executable, None
        if rq_venvs.skip_requested():
            raise SkipTest(f"{rq_venvs.SKIP_ENV}=1: rq {self.pin.rq} worker matrix skipped")
        try:
            python = await deferToThread(rq_venvs.ensure_venv, self.pin)
        except rq_venvs.VenvError as exc:
            return "", str(exc)
        return str(python), None

    def expected_versions(self) -> dict[str, str]:
        """The rq and Python the worker must report."""
        if self.pin is None:
            return {"rq": version("rq"), "python": platform.python_version()}
        installed = rq_venvs.venv_info(Path(self.python)).get("installed", {})
        return {"rq": self.pin.rq, "python": installed.get("python", "?")}

    # -- the daemon's path --------------------------------------------------------

    def need_worker(self) -> None:
        """Fail now when this case's worker venv could not be made."""
        if self.venv_error is not None:
            self.fail(self.venv_error)

    async def enqueue(self, config: SimpleNamespace, row: ScheduleRow) -> BuiltJob:
        """Build with the real builder, plan, then claim+enqueue with the real CLAIM script."""
        builder = make_builder(config, reactor)
        self.addCleanup(builder.close)
        when = int(time.time())
        built = await builder.build(row, when)
        rejected = await self.store.plan(time.time(), {row.name: when})
        self.assertEqual(rejected, {})
        claim = Claim(
            member_for(row.name, when), row.name, when, built.job_id, built.origin, built.fields
        )
        enqueued_at = utcformat(datetime.now(UTC))  # as the timer does
        self.assertEqual(await self.store.claim([claim], enqueued_at), [CLAIMED])
        self.assertEqual(
            self.redis.lrange(f"rq:queue:{built.origin}", 0, -1), [built.job_id.encode()]
        )
        return built

    async def run_worker(
        self, built: BuiltJob, *extra_path: Path, fork: bool = False, outcome: str = "finished"
    ) -> dict[str, Any]:
        """One burst worker of this case's rq on the job's queue; its report of the job.

        A SimpleWorker, or with ``fork`` rq's forking Worker.  ``outcome`` is
        the registry the job must end in: ``finished`` or ``failed``.
        """
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *map(str, extra_path)])
        env["BTU_TEST_RECORD_FILE"] = str(self.records)  # the stand-in execute_job writes here
        argv = [
            self.python,
            "-m",
            "tests.integration.rq_venvs",
            "work",
            *(["--fork"] if fork else []),
            REDIS_URL,
            built.origin,
        ]
        done = await deferToThread(
            subprocess.run, argv, cwd=str(self.records.parent), env=env,
            capture_output=True, text=True, timeout=WORKER_DEADLINE_SECS, check=False,
        )  # fmt: skip
        output = f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(rq_venvs.REPORT_PREFIX)]
        expected = self.expected_versions()
        if not lines:
            self.fail(f"the rq {expected['rq']} worker gave no report:\n{output}")
        report = json.loads(lines[-1][len(rq_venvs.REPORT_PREFIX) :])
        self.assertEqual({k: report[k] for k in expected}, expected, output)
        self.assertEqual(report["worker"], "Worker" if fork else "SimpleWorker", output)
        queue = report["queues"][built.origin]
        job = queue["jobs"].get(built.job_id, {})
        diagnosis = (
            f"rq {report['rq']}, redis-py {report['redis']}, Python {report['python']}:"
            f" {job}\n{output}"
        )
        self.assertIsNone(report["worker_error"], diagnosis)
        # What the worker's own rq reads back: the outcome, with our meta, nothing left.
        other = "failed" if outcome == "finished" else "finished"
        self.assertEqual(queue[other], [], diagnosis)
        self.assertEqual(queue["left"], [], diagnosis)
        self.assertEqual(queue[outcome], [built.job_id], diagnosis)
        self.assertEqual(job.get("status"), outcome, diagnosis)
        self.assertEqual(job.get("meta"), self.expected_meta(built), diagnosis)
        self.assertEqual(done.returncode, 0 if outcome == "finished" else 1, diagnosis)
        # And the hash itself, read without rq.
        self.assertEqual(self.redis.hget(f"rq:job:{built.job_id}", "status"), outcome.encode())
        self.assertEqual(
            self.redis.zcard(f"rq:failed:{built.origin}"), int(outcome == "failed"), diagnosis
        )
        self.assertEqual(self.redis.llen(f"rq:queue:{built.origin}"), 0)
        return job

    def expected_meta(self, built: BuiltJob) -> dict[str, Any]:
        return {"task_schedule": built.schedule, "task": "BTU-COMPAT", "scheduled_time": built.when}

    def one_record(self, built: BuiltJob, func_name: str) -> dict[str, Any]:
        """The single call the worker made, checked against the job we wrote."""
        records = read_records(self.records)
        self.assertEqual(len(records), 1, records)
        return self.check_record(records[0], built, func_name)

    def check_record(
        self, record: dict[str, Any], built: BuiltJob, func_name: str
    ) -> dict[str, Any]:
        """One call the worker made, checked against the job we wrote."""
        job = record["job"]
        self.assertEqual(job["id"], built.job_id)
        self.assertEqual(job["origin"], built.origin)
        self.assertEqual(job["func_name"], func_name)
        self.assertEqual(job["timeout"], 321)
        self.assertEqual(job["meta"], self.expected_meta(built))
        self.assertEqual(
            job["description"], f"BTU Task BTU-COMPAT (Compat) for schedule {built.schedule}"
        )
        self.assertEqual(record["args"], [])
        return record

    def frappe_site_config(self) -> SimpleNamespace:
        """frappe_site with the id style meant for this worker, other keys at their defaults."""
        return builder_config("frappe_site", frappe_job_id_style=self.frappe_id_style)

    def assert_frappe_fields(self, built: BuiltJob) -> None:
        """The hash holds Frappe's TTLs and failure callback, as rq 1.15 and 2.x read them."""
        self.assertRegex(built.job_id, ID_PATTERNS[self.frappe_id_style])
        stored = self.redis.hgetall(f"rq:job:{built.job_id}")
        self.assertEqual(
            {key: stored.get(key) for key in (
                b"result_ttl", b"failure_ttl", b"failure_callback_name",
                b"failure_callback_timeout",
            )},
            {
                b"result_ttl": str(FRAPPE_RESULT_TTL).encode(),
                b"failure_ttl": str(FRAPPE_FAILURE_TTL).encode(),
                b"failure_callback_name": b"frappe.utils.background_jobs.truncate_failed_registry",
                b"failure_callback_timeout": b"60",
            },
        )  # fmt: skip

    # -- one test per builder -----------------------------------------------------

    async def test_function(self) -> None:
        """``function``: the worker calls function_string with the merged kwargs."""
        self.need_worker()
        row = schedule_row(
            "TS-COMPAT-FUNCTION",
            task_arguments=repr({"record_file": str(self.records), "n": 1, "nested": {"a": [1]}}),
            argument_overrides='{"n": 2, "flag": true, "none": null}',
        )
        built = await self.enqueue(builder_config("function"), row)
        self.assertEqual(built.origin, PREFIX + "short")
        await self.run_worker(built)
        record = self.one_record(built, RECORD_FUNC)
        self.assertEqual(
            record["kwargs"], {"n": 2, "nested": {"a": [1]}, "flag": True, "none": None}
        )

    async def test_function_forking_worker(self) -> None:
        """``function`` again, run by rq's forking Worker (a work horse per job), as
        ``rq worker`` and ``bench worker`` run jobs."""
        self.need_worker()
        row = schedule_row(
            "TS-COMPAT-FORK",
            task_arguments=repr({"record_file": str(self.records), "forked": True}),
        )
        built = await self.enqueue(builder_config("function"), row)
        await self.run_worker(built, fork=True)
        record = self.one_record(built, RECORD_FUNC)
        self.assertEqual(record["kwargs"], {"forked": True})

    async def test_frappe_site(self) -> None:
        """``frappe_site``: the worker calls Frappe's execute_job as frappe.enqueue queues it,
        under the id this worker's Frappe writes, and the finished job expires after 600 s."""
        self.need_worker()
        row = schedule_row(
            "TS-COMPAT-SITE",
            function_string="myapp.tasks.nightly",
            task_arguments="{'days': 3}",
            argument_overrides="{'dry_run': True}",
        )
        built = await self.enqueue(self.frappe_site_config(), row)
        self.assert_frappe_fields(built)
        await self.run_worker(built, FAKE_FRAPPE)
        record = self.one_record(built, EXECUTE_JOB)  # and no failure callback
        self.assertEqual(
            record["kwargs"],
            {
                "site": "compat.example.com",
                "method": "myapp.tasks.nightly",
                "event": None,
                "job_name": "Compat",
                "kwargs": {"days": 3, "dry_run": True},
                "user": "scheduler@example.com",
                "is_async": True,
                "retry": 0,
            },
        )
        ttl = self.redis.ttl(f"rq:job:{built.job_id}")
        self.assertTrue(0 < ttl <= FRAPPE_RESULT_TTL, ttl)
        self.assert_frappe_fields(built)  # the worker kept them

    async def test_frappe_site_hash_is_frappe_enqueue(self) -> None:
        """The ``frappe_site`` hash is the one ``frappe.enqueue`` has this worker's rq write
        (same call, TTLs, callback, timeout, queue), field for field, except the times,
        our description and meta, and rq 2.x's ``group_id`` (older rq ignores it)."""
        self.need_worker()
        row = schedule_row("TS-COMPAT-HASH", function_string="myapp.tasks.nightly")
        built = await self.enqueue(self.frappe_site_config(), row)
        ours = self.redis.hgetall(f"rq:job:{built.job_id}")
        data = zlib.decompress(ours.pop(b"data"))
        theirs_id = built.job_id[:-36] + "0" * 8 + built.job_id[-28:]  # same style, another job
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
        argv = [
            self.python, "-c", FRAPPE_ENQUEUE_SCRIPT, REDIS_URL, built.origin, theirs_id,
            json.dumps(pickle.loads(data)[3]), "321",
        ]  # fmt: skip
        done = await deferToThread(
            subprocess.run, argv, env=env, capture_output=True, text=True,
            timeout=WORKER_DEADLINE_SECS, check=False,
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, done.stderr)
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
        self.assertEqual(bytes.fromhex(theirs.pop("data")), data)  # the very same pickle
        mine = {key.decode(): value.decode() for key, value in ours.items() if key != b"meta"}
        for key in ("created_at", "enqueued_at", "description"):
            self.assertIn(key, theirs)
            self.assertTrue(mine.pop(key))
            theirs.pop(key)
        if "group_id" not in theirs:
            self.assertEqual(mine.pop("group_id"), "")
        self.assertEqual(mine, theirs)
        self.assertEqual(mine["failure_ttl"], "604800")  # not empty on both sides

    async def test_frappe_site_failure(self) -> None:
        """A failing ``frappe_site`` job: the worker calls Frappe's truncate_failed_registry,
        and the failed job is kept Frappe's 7 days, not rq's year."""
        self.need_worker()
        row = schedule_row("TS-COMPAT-SITE-FAIL", function_string=FAILING_METHOD)
        built = await self.enqueue(self.frappe_site_config(), row)
        await self.run_worker(built, FAKE_FRAPPE, outcome="failed")
        records = read_records(self.records)
        self.assertEqual(len(records), 2, records)
        call, callback = records
        self.check_record(call, built, EXECUTE_JOB)
        self.assertEqual(call["kwargs"]["method"], FAILING_METHOD)
        self.assertEqual(
            callback["kwargs"],
            {
                "callback": "truncate_failed_registry",
                "callback_job_id": built.job_id,
                "site": "compat.example.com",
                "exc_type": "RuntimeError",
                "exc": f"{FAILING_METHOD} failed on purpose",
            },
        )
        self.assert_frappe_fields(built)
        ttl = self.redis.ttl(f"rq:job:{built.job_id}")
        self.assertTrue(FRAPPE_FAILURE_TTL - TTL_SLACK_SECS < ttl <= FRAPPE_FAILURE_TTL, ttl)
        [(member, score)] = self.redis.zrange(f"rq:failed:{built.origin}", 0, -1, withscores=True)
        self.assertEqual(member, built.job_id.encode())
        expires_in = score - time.time()
        self.assertTrue(
            FRAPPE_FAILURE_TTL - TTL_SLACK_SECS < expires_in <= FRAPPE_FAILURE_TTL + 5, expires_in
        )

    async def test_frappe(self) -> None:
        """``frappe``: the site's pickle, stored untouched, names the function the worker calls."""
        self.need_worker()
        kwargs = {"record_file": str(self.records), "via": "get_pickled_task", "n": [1, 2]}
        payload = pickle.dumps((RECORD_FUNC, None, (), kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        site = PickleSite(payload)
        port = reactor.listenTCP(0, Site(site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        # frappe.enqueue's id, as frappe_site's: the style this worker's rq reads.
        config = builder_config("frappe", webserver_port=port.getHost().port,
                                frappe_job_id_style=self.frappe_id_style)
        row = schedule_row("TS-COMPAT-FRAPPE")
        built = await self.enqueue(config, row)
        self.assertEqual(site.bodies, [{"task_id": "BTU-COMPAT", "task_schedule_id": row.name}])
        stored = self.redis.hget(f"rq:job:{built.job_id}", "data")
        self.assertEqual(zlib.decompress(stored), payload)  # the site's bytes, untouched
        await self.run_worker(built)
        record = self.one_record(built, RECORD_FUNC)
        self.assertEqual(record["kwargs"], {"via": "get_pickled_task", "n": [1, 2]})


class OwnRqWorkerTests(_WorkerMatrix, TestCase):
    """Workers of the rq installed with the daemon (this interpreter)."""

    pin = None
    frappe_id_style = "uuid"  # rq 2.12 and later refuse Frappe's ids


class FrappeV15RqWorkerTests(_WorkerMatrix, TestCase):
    """Workers of rq 1.15.1, as Frappe v15 pins (``rq~=1.15.1``, ``redis~=4.5.5``)."""

    pin = rq_venvs.PINS["1.15.1"]
    frappe_id_style = "v15"


class FrappeDevelopRqWorkerTests(_WorkerMatrix, TestCase):
    """Workers of rq 2.6.1, as Frappe develop pins (``rq==2.6.1``, ``redis~=7.1.0``)."""

    pin = rq_venvs.PINS["2.6.1"]
    frappe_id_style = "develop"
