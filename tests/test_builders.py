"""Tests for btu_twisted.jobs.builders and btu_twisted.jobs.frappe_http.

The job hash is checked the way it will be used: rq itself loads it back, and
in the end-to-end tests a real rq worker (a child process, see
``tests/jobfuncs.py``) runs the job from Redis database 15.  The ``frappe``
builder talks to a twisted.web stand-in of the Frappe site on 127.0.0.1,
over plain HTTP and over TLS with a CA and certificate made at test time.
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rq.job import Job, JobStatus
from rq.utils import now as rq_now
from rq.utils import utcformat
from twisted.internet import defer, reactor, ssl
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import capturedLogs
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from btu_twisted.jobs import builders, frappe_http
from btu_twisted.jobs import frappe as frappe_builders
from btu_twisted.jobs.builders import (
    BuildError,
    BuiltJob,
    make_builder,
    merged_kwargs,
    queue_origin,
)
from btu_twisted.records import ScheduleRow
from tests import jobfuncs
from tests.integration.support import REDIS_HOST, REDIS_PORT, OwnRedis

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_FRAPPE = Path(__file__).resolve().parent / "fixtures" / "builders_fake_frappe"
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/15"
TOKEN = "token abcdef0123:s3cr3t-api-secret"
WHEN = 1_767_225_600  # 2026-01-01T00:00:00Z
RECORD_FUNC = "tests.jobfuncs.record"


def make_row(**changes: Any) -> ScheduleRow:
    """A schedule row like the SQL layer produces, with ``changes`` applied."""
    row = ScheduleRow(
        name="TS-000001",
        task="BTU-00001",
        enabled=True,
        cron_string="*/5 * * * *",
        queue_name=None,
        argument_overrides=None,
        task_description="Ping the site",
        schedule_description="Every five minutes",
        cron_time_zone="UTC",
        function_string=RECORD_FUNC,
        task_arguments=None,
        max_task_duration=None,
        task_queue_name=None,
        desc_short="Ping Now",
    )
    return replace(row, **changes)


def make_config(**changes: Any) -> SimpleNamespace:
    """A stand-in for btu_twisted.config.Config with the attributes builders read."""
    values: dict[str, Any] = {
        "job_builder": "function",
        "rq_queue_prefix": "",
        "webserver_ip": "127.0.0.1",
        "webserver_port": 8000,
        "webserver_scheme": None,
        "webserver_host_header": None,
        "webserver_token": TOKEN,
        "webserver_ca_file": None,
        "webserver_timeout_secs": 5.0,
        "frappe_site_name": "site1.local",
        "frappe_user": "Administrator",
        "frappe_job_id_style": "v15",
        "result_ttl": None,
        "failure_ttl": None,
    }
    values.update(changes)
    return SimpleNamespace(**values)


def build_now(builder: builders.JobBuilder, row: ScheduleRow, when: int = WHEN) -> BuiltJob:
    """Return the result of a builder whose Deferred has already fired."""
    results: list[Any] = []
    builder.build(row, when).addBoth(results.append)
    assert len(results) == 1, "synchronous builders fire at once"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def as_stored(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """The hash as Redis hands it back: bytes keys and bytes values (redis-py's encoding)."""
    out = {}
    for key, value in fields.items():
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str):
            data = value.encode()
        elif isinstance(value, float):
            data = repr(value).encode()
        else:
            data = str(value).encode()
        out[key.encode()] = data
    return out


def restore(built: BuiltJob) -> Job:
    """Load the built fields back with rq's own Job.restore.

    The Job gets no id: this rq refuses Frappe's ``site::uuid`` ids, and the
    hash does not depend on the id anyway.
    """
    job = Job(connection=redis.Redis())  # never used: restore does no I/O
    job.restore(as_stored(built.fields))
    return job


class MergedKwargsTests(SynchronousTestCase):
    """Task arguments updated by schedule overrides, parsed as data and never run."""

    def test_empty_columns(self) -> None:
        """None, empty and whitespace-only columns are no arguments."""
        for value in (None, "", "   \n\t"):
            row = make_row(task_arguments=value, argument_overrides=value)
            self.assertEqual(merged_kwargs(row), {})

    def test_overrides_win(self) -> None:
        """The schedule's overrides update the task's arguments key by key."""
        row = make_row(
            task_arguments="{'a': 1, 'b': [1, 2], 'c': 'task'}",
            argument_overrides="{'c': 'schedule', 'd': None}",
        )
        self.assertEqual(merged_kwargs(row), {"a": 1, "b": [1, 2], "c": "schedule", "d": None})

    def test_json_and_python_literals(self) -> None:
        """JSON (true/null, as BTU now saves) and Python literals (True/None) both parse."""
        row = make_row(
            task_arguments='{"flag": true, "none": null, "n": 1.5}',
            argument_overrides="{'other': True, 'tuple': (1, 'x')}",
        )
        self.assertEqual(
            merged_kwargs(row),
            {"flag": True, "none": None, "n": 1.5, "other": True, "tuple": (1, "x")},
        )

    def test_bad_literal_names_schedule_and_column(self) -> None:
        """A malformed literal is a permanent BuildError naming the schedule and the column."""
        row = make_row(task_arguments="{'a': 1", argument_overrides=None)
        exc = self.assertRaises(BuildError, merged_kwargs, row)
        self.assertFalse(exc.transient)
        self.assertIn("TS-000001", str(exc))
        self.assertIn("task arguments", str(exc))
        row = make_row(task_arguments="{}", argument_overrides="{'a': undefined_name}")
        exc = self.assertRaises(BuildError, merged_kwargs, row)
        self.assertIn("argument_overrides", str(exc))

    def test_code_is_never_run(self) -> None:
        """Code in a column is refused, not evaluated: the marker file is never written."""
        marker = Path(self.mktemp())
        attempts = [
            f"__import__('os').system('touch {marker}')",
            f"{{'a': __import__('pathlib').Path('{marker}').touch()}}",
            f"{{'a': open('{marker}', 'w')}}",
            "(lambda: 1)()",
            "{'a': 1 if True else 2}",
        ]
        for text in attempts:
            for column in ("task_arguments", "argument_overrides"):
                row = make_row(**{column: text})
                exc = self.assertRaises(BuildError, merged_kwargs, row)
                self.assertFalse(exc.transient)
        self.assertFalse(marker.exists())

    def test_not_a_dict(self) -> None:
        """Lists, strings and numbers are refused; so are non-string keys."""
        for text in ("[1, 2]", "'abc'", "42", '"json string"', "{1: 'a'}", "None"):
            exc = self.assertRaises(BuildError, merged_kwargs, make_row(task_arguments=text))
            self.assertFalse(exc.transient)
            self.assertIn("task arguments", str(exc))

    def test_error_is_one_line(self) -> None:
        """The message stays on one line even for multi-line input."""
        exc = self.assertRaises(
            BuildError, merged_kwargs, make_row(argument_overrides="{\n'a':\n")
        )
        self.assertNotIn("\n", str(exc))


class QueueOriginTests(SynchronousTestCase):
    """origin = prefix + schedule queue, else task queue, else default."""

    def test_schedule_queue_first(self) -> None:
        """The schedule's queue wins over the task's."""
        row = make_row(queue_name="long", task_queue_name="short")
        self.assertEqual(queue_origin(row, "bench-x:"), "bench-x:long")

    def test_task_queue_next(self) -> None:
        """Without a schedule queue the task's queue is used; blanks count as missing."""
        for missing in (None, "", "  "):
            row = make_row(queue_name=missing, task_queue_name=" short ")
            self.assertEqual(queue_origin(row, ""), "short")

    def test_default(self) -> None:
        """With neither queue the origin is prefix + default."""
        row = make_row(queue_name=" ", task_queue_name=None)
        self.assertEqual(queue_origin(row, "home-frappe-bench:"), "home-frappe-bench:default")


class LocalBuilderTests(SynchronousTestCase):
    """The function and frappe_site builders produce what rq itself would write."""

    def test_function_fields_load_back_in_rq(self) -> None:
        """rq reads back func_name, kwargs, origin, timeout, meta, description and status."""
        row = make_row(
            task_arguments="{'a': 1}",
            argument_overrides="{'b': 'two'}",
            queue_name="short",
            max_task_duration=120,
        )
        built = build_now(make_builder(make_config(rq_queue_prefix="p:"), reactor), row)
        self.assertEqual(built.origin, "p:short")
        self.assertEqual((built.schedule, built.when), ("TS-000001", WHEN))
        self.assertEqual(str(uuid.UUID(built.job_id)), built.job_id)
        job = restore(built)
        self.assertEqual(job.func_name, RECORD_FUNC)
        self.assertEqual(job.args, ())
        self.assertEqual(job.kwargs, {"a": 1, "b": "two"})
        self.assertEqual(job.origin, "p:short")
        self.assertEqual(job.timeout, 120)
        self.assertEqual(
            job.meta, {"task_schedule": "TS-000001", "task": "BTU-00001", "scheduled_time": WHEN}
        )
        self.assertEqual(job.description, "BTU Task BTU-00001 (Ping Now) for schedule TS-000001")
        self.assertEqual(job.get_status(refresh=False), JobStatus.QUEUED)

    def test_fields_match_rq_to_dict(self) -> None:
        """The fields are rq's own to_dict() keys, with plain values only."""
        built = build_now(make_builder(make_config(), reactor), make_row())
        reference = Job.create(
            RECORD_FUNC, connection=builders.NO_REDIS, origin="default", status=JobStatus.QUEUED
        ).to_dict()
        self.assertEqual(set(built.fields) - {"meta", "timeout"}, set(reference))
        for value in built.fields.values():
            self.assertIn(type(value), (bytes, str, int, float))
        self.assertEqual(built.fields["status"], "queued")
        self.assertNotIn("enqueued_at", built.fields)

    def test_data_is_zlib_compressed_pickle(self) -> None:
        """data holds zlib(pickle((func, None, (), kwargs))), as rq 2.x stores it."""
        row = make_row(task_arguments="{'x': 1}")
        built = build_now(make_builder(make_config(), reactor), row)
        self.assertEqual(
            pickle.loads(zlib.decompress(built.fields["data"])), (RECORD_FUNC, None, (), {"x": 1})
        )

    def test_timeout_default(self) -> None:
        """No, zero or negative max_task_duration gives BTU's default of 600 seconds."""
        builder = make_builder(make_config(), reactor)
        for duration in (None, 0, -5):
            built = build_now(builder, make_row(max_task_duration=duration))
            self.assertEqual(built.fields["timeout"], 600)

    def test_description_without_title(self) -> None:
        """Without a short description the task description is used, else just the task."""
        builder = make_builder(make_config(), reactor)
        built = build_now(builder, make_row(desc_short=None))
        self.assertEqual(
            built.fields["description"], "BTU Task BTU-00001 (Ping the site) for schedule TS-000001"
        )
        built = build_now(builder, make_row(desc_short=None, task_description=None))
        self.assertEqual(built.fields["description"], "BTU Task BTU-00001 for schedule TS-000001")

    def test_each_build_gets_a_new_id(self) -> None:
        """Two builds of the same run are two jobs (the store decides which one is written)."""
        builder = make_builder(make_config(), reactor)
        first, second = build_now(builder, make_row()), build_now(builder, make_row())
        self.assertNotEqual(first.job_id, second.job_id)

    def test_missing_function_string(self) -> None:
        """No function_string (or a missing task row) is a permanent error."""
        for kind in ("function", "frappe_site"):
            builder = make_builder(make_config(job_builder=kind), reactor)
            for value in (None, "", "  "):
                row = make_row(function_string=value)
                exc = self.assertRaises(BuildError, build_now, builder, row)
                self.assertFalse(exc.transient)
                self.assertIn("function_string", str(exc))
                self.assertIn("TS-000001", str(exc))

    def test_bad_arguments_fail_the_build(self) -> None:
        """A bad literal fails the Deferred with the permanent BuildError."""
        builder = make_builder(make_config(), reactor)
        failure = self.failureResultOf(
            builder.build(make_row(argument_overrides="{oops"), WHEN), BuildError
        )
        self.assertFalse(failure.value.transient)

    def test_frappe_site_is_frappe_enqueue(self) -> None:
        """frappe_site queues execute_job with the kwargs frappe.enqueue would put there."""
        config = make_config(
            job_builder="frappe_site",
            frappe_site_name="erp.example.com",
            frappe_user="robot@example.com",
        )
        row = make_row(
            function_string="myapp.tasks.nightly",
            task_arguments='{"days": 3}',
            argument_overrides="{'dry_run': True}",
        )
        job = restore(build_now(make_builder(config, reactor), row))
        self.assertEqual(job.func_name, "frappe.utils.background_jobs.execute_job")
        self.assertEqual(
            job.kwargs,
            {
                "site": "erp.example.com",
                "user": "robot@example.com",
                "method": "myapp.tasks.nightly",
                "event": None,
                "job_name": "Ping Now",
                "is_async": True,
                "kwargs": {"days": 3, "dry_run": True},
            },
        )
        job = restore(build_now(make_builder(config, reactor), replace(row, desc_short=None)))
        self.assertEqual(job.kwargs["job_name"], "myapp.tasks.nightly")

    def test_frappe_site_ttls_and_failure_callback(self) -> None:
        """frappe_site jobs carry Frappe's TTLs and on-failure callback, as rq reads them back."""
        config = make_config(job_builder="frappe_site")
        built = build_now(make_builder(config, reactor), make_row())
        job = restore(built)
        self.assertEqual((job.result_ttl, job.failure_ttl), (600, 604800))
        self.assertEqual(job._failure_callback_name, builders.FRAPPE_FAILURE_CALLBACK)
        self.assertEqual(job.failure_callback_timeout, 60)  # rq's default, as Frappe's Callback
        self.assertEqual(
            builders.FRAPPE_FAILURE_CALLBACK,
            "frappe.utils.background_jobs.truncate_failed_registry",
        )
        # The field names both rq 1.15 and 2.x read; no success or stopped callback.
        self.assertEqual(
            {key: built.fields[key] for key in built.fields if "callback" in key or "ttl" in key},
            {
                "failure_callback_name": builders.FRAPPE_FAILURE_CALLBACK,
                "failure_callback_timeout": 60,
                "success_callback_name": "",
                "stopped_callback_name": "",
                "result_ttl": 600,
                "failure_ttl": 604800,
            },
        )

    def test_configured_ttls(self) -> None:
        """result_ttl/failure_ttl override Frappe's for frappe_site and rq's for function."""
        for kind in ("frappe_site", "function"):
            config = make_config(job_builder=kind, result_ttl=0, failure_ttl=-1)
            job = restore(build_now(make_builder(config, reactor), make_row()))
            self.assertEqual((job.result_ttl, job.failure_ttl), (0, -1), kind)
        # Unset, function jobs keep rq's defaults (nothing in the hash) and no callback.
        built = build_now(make_builder(make_config(job_builder="function"), reactor), make_row())
        self.assertNotIn("result_ttl", built.fields)
        self.assertNotIn("failure_ttl", built.fields)
        self.assertEqual(built.fields["failure_callback_name"], "")

    def test_frappe_site_id_styles(self) -> None:
        """Each frappe_job_id_style is the id that Frappe's create_job_id writes, new per build."""
        patterns = {
            None: r"site1\.local::[0-9a-f-]{36}",  # Frappe v15 is the default
            "v15": r"site1\.local::[0-9a-f-]{36}",
            "develop": r"site1\.local\|\|[0-9a-f-]{36}",
            "uuid": r"[0-9a-f-]{36}",
        }
        for style, pattern in patterns.items():
            config = make_config(job_builder="frappe_site", frappe_job_id_style=style)
            builder = make_builder(config, reactor)
            first, second = build_now(builder, make_row()), build_now(builder, make_row())
            self.assertRegex(first.job_id, rf"\A{pattern}\Z", style)
            self.assertNotEqual(first.job_id, second.job_id)
            unique = first.job_id[-36:]
            self.assertEqual(str(uuid.UUID(unique)), unique)

    def test_frappe_site_hash_does_not_depend_on_the_id(self) -> None:
        """rq's Job refuses ':' ids, so the hash is built under a placeholder: nothing in it
        names an id, and two builds differ only in created_at."""
        self.assertRaises(
            ValueError,
            Job.create,
            "x",
            connection=builders.NO_REDIS,
            id=f"site1.local::{uuid.uuid4()}",
        )
        builder = make_builder(make_config(job_builder="frappe_site"), reactor)
        first, second = build_now(builder, make_row()), build_now(builder, make_row())
        for built in (first, second):
            unique = built.job_id.split("::")[1].encode()
            for value in built.fields.values():
                self.assertNotIn(unique, value if isinstance(value, bytes) else str(value).encode())
        differing = {k for k in first.fields if first.fields[k] != second.fields[k]}
        self.assertLessEqual(differing, {"created_at"})

    def test_config_knows_the_id_styles(self) -> None:
        """The config check accepts exactly the styles the builder can write."""
        from btu_twisted import config_fields

        self.assertEqual(config_fields._FRAPPE_JOB_ID_STYLES, tuple(builders.FRAPPE_JOB_ID_STYLES))

    def test_bad_id_style(self) -> None:
        """An unknown id style is refused when the builder is made, not at the first run."""
        config = make_config(job_builder="frappe_site", frappe_job_id_style="v99")
        exc = self.assertRaises(ValueError, make_builder, config, reactor)
        self.assertIn("frappe_job_id_style", str(exc))

    def test_unexpected_errors_become_build_errors(self) -> None:
        """A bug (or an rq change) still fails the Deferred with a BuildError, and is logged."""

        def broken(*args: Any, **kwargs: Any) -> BuiltJob:
            raise KeyError("rq changed")

        self.patch(builders, "rq_fields", broken)
        self.patch(frappe_builders, "rq_fields", broken)
        for kind in ("function", "frappe_site"):
            builder = make_builder(make_config(job_builder=kind), reactor)
            failure = self.failureResultOf(builder.build(make_row(), WHEN), BuildError)
            self.assertIn("unexpected KeyError", str(failure.value))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 2)

    def test_no_redis_guard(self) -> None:
        """The stand-in connection is truthy and refuses every use."""
        self.assertTrue(builders.NO_REDIS)
        exc = self.assertRaises(RuntimeError, lambda: builders.NO_REDIS.hset)
        self.assertIn("hset", str(exc))

    def test_bad_configs(self) -> None:
        """Unknown builders and a frappe_site without a site name are refused at construction."""
        self.assertRaises(ValueError, make_builder, make_config(job_builder="celery"), reactor)
        self.assertRaises(
            ValueError,
            make_builder,
            make_config(job_builder="frappe_site", frappe_site_name=None),
            reactor,
        )

    def test_close(self) -> None:
        """Local builders close at once."""
        for kind in ("function", "frappe_site"):
            builder = make_builder(make_config(job_builder=kind), reactor)
            self.assertIsNone(self.successResultOf(builder.close()))


class SiteUrlTests(SynchronousTestCase):
    """The endpoint URL from ip, port and scheme."""

    def test_scheme_from_port(self) -> None:
        """Without a scheme, port 443 means https and any other port http."""
        self.assertEqual(
            frappe_http.site_url("10.0.0.5", 443, None),
            "https://10.0.0.5:443/api/method/btu.btu_api.endpoints.get_pickled_task",
        )
        self.assertEqual(
            frappe_http.site_url("10.0.0.5", 8000, None),
            "http://10.0.0.5:8000/api/method/btu.btu_api.endpoints.get_pickled_task",
        )

    def test_explicit_scheme_and_ipv6(self) -> None:
        """An explicit scheme wins; IPv6 addresses get brackets."""
        url = frappe_http.site_url("::1", 8443, "https")
        self.assertTrue(url.startswith("https://[::1]:8443/"))
        url = frappe_http.site_url("127.0.0.1", 443, "http")
        self.assertTrue(url.startswith("http://127.0.0.1:443/"))
        self.assertRaises(ValueError, frappe_http.site_url, "127.0.0.1", 80, "ftp")


# --- Redis and worker helpers -------------------------------------------------


def redis_db15() -> redis.Redis:
    """A client for the test database 15, flushed; SkipTest when Redis is not running."""
    client = OwnRedis(host=REDIS_HOST, port=REDIS_PORT, db=15, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise SkipTest(f"no Redis at {REDIS_URL}: {exc}") from None
    client.flushdb()
    return client


def enqueue_like_store(client: redis.Redis, built: BuiltJob) -> None:
    """Write the job hash and queue it the way the store does (sync here: test code)."""
    fields = dict(built.fields)
    fields["enqueued_at"] = utcformat(rq_now())
    queue_key = f"rq:queue:{built.origin}"
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(f"rq:job:{built.job_id}", mapping=fields)
        pipe.sadd("rq:queues", queue_key)
        pipe.rpush(queue_key, built.job_id)
        pipe.execute()


async def run_worker(testcase: TestCase, queues: list[str], *extra_path: Path, **env: str) -> None:
    """Run one burst rq worker child process on ``queues`` and fail the test if it fails."""
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *map(str, extra_path)])
    child_env.update(env)
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        jobfuncs.worker_argv(REDIS_URL, queues)[1:],
        env=child_env,
        path=str(REPO_ROOT),
        reactor=reactor,
    )
    if code != 0:
        testcase.fail(f"worker exited {code}:\n{out.decode()}\n{err.decode()}")


class RedisRoundTripTests(TestCase):
    """The hash written to a real Redis is fetched and run by real rq."""

    def setUp(self) -> None:
        self.redis = redis_db15()
        self.addCleanup(self.redis.close)
        self.addCleanup(self.redis.flushdb)

    def test_job_fetch(self) -> None:
        """Job.fetch from Redis sees the same job the builder described."""
        row = make_row(task_arguments="{'a': 1}", queue_name="short", max_task_duration=90)
        built = build_now(make_builder(make_config(rq_queue_prefix="bench:"), reactor), row)
        enqueue_like_store(self.redis, built)
        job = Job.fetch(built.job_id, connection=self.redis)
        self.assertEqual(
            (job.func_name, job.kwargs, job.origin, job.timeout),
            (RECORD_FUNC, {"a": 1}, "bench:short", 90),
        )
        self.assertEqual(job.get_status(), JobStatus.QUEUED)
        self.assertEqual(self.redis.lrange("rq:queue:bench:short", 0, -1), [built.job_id.encode()])

    async def test_function_job_runs_in_worker(self) -> None:
        """A real worker runs the function job with the merged kwargs and our meta."""
        records = os.path.abspath(self.mktemp())
        row = make_row(
            task_arguments=f"{{'record_file': {records!r}, 'a': 1, 'b': 'task'}}",
            argument_overrides="{'b': 'schedule'}",
            queue_name="short",
        )
        built = build_now(make_builder(make_config(rq_queue_prefix="bench:"), reactor), row)
        enqueue_like_store(self.redis, built)
        await run_worker(self, ["bench:short"])
        [entry] = jobfuncs.read_records(records)
        self.assertEqual(entry["kwargs"], {"a": 1, "b": "schedule"})
        self.assertEqual(entry["job"]["id"], built.job_id)
        self.assertEqual(entry["job"]["origin"], "bench:short")
        self.assertEqual(entry["job"]["meta"]["scheduled_time"], WHEN)
        job = Job.fetch(built.job_id, connection=self.redis)
        self.assertEqual(job.get_status(), JobStatus.FINISHED)

    async def test_frappe_site_job_runs_in_worker(self) -> None:
        """A worker with a stand-in frappe package calls execute_job as Frappe's workers would."""
        records = os.path.abspath(self.mktemp())
        config = make_config(
            job_builder="frappe_site",
            frappe_site_name="site1.local",
            frappe_user="Administrator",
            frappe_job_id_style="uuid",  # this worker's rq (2.12+) refuses Frappe's ids
        )
        row = make_row(
            function_string="myapp.tasks.ping",
            task_arguments='{"count": 2, "verbose": false}',
            argument_overrides="{'count': 3}",
        )
        built = build_now(make_builder(config, reactor), row)
        enqueue_like_store(self.redis, built)
        await run_worker(self, ["default"], FAKE_FRAPPE, BTU_TEST_RECORD_FILE=records)
        [entry] = jobfuncs.read_records(records)
        self.assertEqual(
            entry["kwargs"],
            {
                "site": "site1.local",
                "method": "myapp.tasks.ping",
                "event": None,
                "job_name": "Ping Now",
                "kwargs": {"count": 3, "verbose": False},
                "user": "Administrator",
                "is_async": True,
                "retry": 0,
            },
        )
        self.assertEqual(entry["job"]["func_name"], "frappe.utils.background_jobs.execute_job")


# --- A stand-in Frappe site -------------------------------------------------


class TrackingFactory(WrappingFactory):
    """Remembers open server connections so cleanup can close them and wait."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._waiters: list[defer.Deferred[None]] = []
        self.connections_made = 0

    def registerProtocol(self, p: Any) -> None:
        self.connections_made += 1
        super().registerProtocol(p)

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def close_all(self) -> defer.Deferred[None]:
        """Abort every open connection; fire when all are gone."""
        if not self.protocols:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(waiter)
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()
        return waiter


def frappe_answer(payload: bytes) -> bytes:
    """Frappe's JSON for a whitelisted method returning ``bytes``."""
    return json.dumps({"message": list(payload)}).encode()


class FakeFrappe(Resource):
    """The BTU endpoint of a Frappe site: checks the request, answers with ``respond``."""

    isLeaf = True

    def __init__(self, respond: Callable[[Request], bytes | int]) -> None:
        super().__init__()
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.bytes_sent = 0

    def render(self, request: Request) -> bytes | int:
        body = request.content.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()},
                "body": body,
            }
        )
        return self.respond(request)


def ok_answer(kwargs: dict[str, Any]) -> Callable[[Request], bytes]:
    """Answer as BTU does: the rq tuple pickled at the highest protocol, as a byte array."""
    payload = pickle.dumps((RECORD_FUNC, None, (), kwargs), protocol=pickle.HIGHEST_PROTOCOL)

    def respond(request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return frappe_answer(payload)

    return respond


def status_answer(
    code: int, body: bytes, content_type: bytes = b"application/json"
) -> Callable[[Request], bytes]:
    """Answer with a fixed status and body."""

    def respond(request: Request) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type)
        return body

    return respond


class TLSFiles:
    """A CA and a server certificate for site1.local, made once per test run."""

    _made: TLSFiles | None = None

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "btu_twisted test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site1.local")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName("site1.local")]), critical=False
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = directory / "tls_test_ca.pem"
        self.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self.server_pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def get(cls, directory: Path) -> TLSFiles:
        """Make the files on first use (key generation is the slow part)."""
        if cls._made is None or not cls._made.ca_file.exists():
            cls._made = cls(directory)
        return cls._made


class FrappeBuilderTests(TestCase):
    """The frappe builder against a local stand-in site, over HTTP and HTTPS."""

    def setUp(self) -> None:
        self.site = FakeFrappe(ok_answer({"hello": "world"}))

    def listen(self, tls: bool = False) -> int:
        """Serve the stand-in site on 127.0.0.1; cleanup closes connections, then the port."""
        self.factory = TrackingFactory(Site(self.site))
        if tls:
            self.tls = TLSFiles.get(Path(self.mktemp()))
            options = ssl.PrivateCertificate.loadPEM(self.tls.server_pem).options()
            port = reactor.listenSSL(0, self.factory, options, interface="127.0.0.1")
        else:
            port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(self.factory.close_all)
        return port.getHost().port

    def builder(self, port: int, **changes: Any) -> builders.JobBuilder:
        """A frappe builder for the stand-in site, closed at cleanup."""
        config = make_config(job_builder="frappe", webserver_port=port, **changes)
        builder = make_builder(config, reactor)
        self.addCleanup(builder.close)
        return builder

    async def build_error(
        self, builder: builders.JobBuilder, row: ScheduleRow | None = None
    ) -> BuildError:
        """Build and return the BuildError it must fail with, checking it hides the token."""
        try:
            await builder.build(row or make_row(), WHEN)
        except BuildError as exc:
            self.assertNotIn("s3cr3t", str(exc))
            self.assertNotIn("\n", str(exc))
            self.assertIn("TS-000001", str(exc))
            return exc
        self.fail("the build should have failed")

    async def test_a_fetch_logs_no_factory_lines(self) -> None:
        """Twisted's HTTP client factory said "Starting/Stopping factory" on every
        connection: 94 lines for 43 runs on a real site."""
        from twisted.logger import globalLogPublisher
        from twisted.web import client as web_client

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        builder = self.builder(self.listen())
        await builder.build(make_row(), WHEN)
        await builder.close()
        # The stand-in site's own (server) factory may speak; the client's must not.
        client = [e for e in events if isinstance(e.get("factory"),
                                                  web_client._HTTP11ClientFactory)]
        self.assertEqual(client, [])
        self.assertEqual([e for e in events if "HTTP11ClientFactory" in str(e.get("factory"))],
                         [])

    async def test_request_and_job(self) -> None:
        """POST with token, Host, JSON body; the site's pickle becomes the job's data as is."""
        builder = self.builder(
            self.listen(), webserver_host_header="site1.local", rq_queue_prefix="b:"
        )
        built = await builder.build(make_row(queue_name="long", max_task_duration=30), WHEN)
        [seen] = self.site.requests
        self.assertEqual(seen["method"], b"POST")
        self.assertEqual(seen["path"], frappe_http.ENDPOINT_PATH.encode())
        self.assertEqual(seen["headers"][b"authorization"], [TOKEN.encode()])
        self.assertEqual(seen["headers"][b"host"], [b"site1.local"])
        self.assertEqual(seen["headers"][b"content-type"], [b"application/json"])
        self.assertEqual(seen["headers"][b"accept"], [b"application/json"])
        self.assertNotIn(b"cookie", seen["headers"])
        self.assertEqual(
            json.loads(seen["body"]), {"task_id": "BTU-00001", "task_schedule_id": "TS-000001"}
        )
        call = (RECORD_FUNC, None, (), {"hello": "world"})
        payload = pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)
        self.assertEqual(built.fields["data"], zlib.compress(payload))
        self.assertEqual(built.origin, "b:long")
        job = restore(built)
        self.assertEqual(
            (job.func_name, job.kwargs, job.timeout), (RECORD_FUNC, {"hello": "world"}, 30)
        )
        self.assertEqual(job.meta["task_schedule"], "TS-000001")
        self.assertEqual(built.fields["status"], "queued")

    async def test_jobs_have_the_frappe_enqueue_shape(self) -> None:
        """Like frappe_site's (frappe.enqueue's): a "<site>::<uuid>" id, Frappe's TTLs
        (not rq's year for a failed job) and truncate_failed_registry on failure."""
        built = await self.builder(self.listen()).build(make_row(), WHEN)
        self.assertRegex(built.job_id, r"\Asite1\.local::[0-9a-f-]{36}\Z")
        job = restore(built)
        self.assertEqual((job.result_ttl, job.failure_ttl), (600, 604800))
        self.assertEqual(job._failure_callback_name, builders.FRAPPE_FAILURE_CALLBACK)
        site_job = restore(build_now(make_builder(make_config(job_builder="frappe_site"),
                                                  reactor), make_row()))
        shape = ("result_ttl", "failure_ttl", "failure_callback_name", "failure_callback_timeout")
        self.assertEqual({k: built.fields[k] for k in shape},
                         {k: site_job.to_dict()[k] for k in shape})

    async def test_frappe_enqueue_shape_follows_the_config(self) -> None:
        """The site is frappe_site_name, else the Host header's name, else unknown (a
        bare uuid); the id style and the TTLs are the config's."""
        port = self.listen()
        cases = [
            ({"frappe_site_name": None, "webserver_host_header": "erp.example.com"},
             r"erp\.example\.com::[0-9a-f-]{36}"),
            ({"frappe_site_name": None, "frappe_job_id_style": "develop",
              "webserver_host_header": "erp.example.com"}, r"erp\.example\.com\|\|[0-9a-f-]{36}"),
            ({"frappe_site_name": None}, r"[0-9a-f-]{36}"),
        ]
        for changes, pattern in cases:
            built = await self.builder(port, **changes).build(make_row(), WHEN)
            self.assertRegex(built.job_id, rf"\A{pattern}\Z", changes)
            self.assertEqual(built.fields["failure_ttl"], 604800)
        built = await self.builder(port, result_ttl=0, failure_ttl=-1).build(make_row(), WHEN)
        self.assertEqual((built.fields["result_ttl"], built.fields["failure_ttl"]), (0, -1))

    async def test_host_defaults_to_address(self) -> None:
        """Without webserver_host_header, Host is the address and port connected to."""
        port = self.listen()
        await self.builder(port).build(make_row(), WHEN)
        self.assertEqual(self.site.requests[0]["headers"][b"host"], [f"127.0.0.1:{port}".encode()])

    async def test_connection_reused(self) -> None:
        """Consecutive builds share one persistent connection; close() drops it."""
        builder = self.builder(self.listen())
        for _ in range(3):
            await builder.build(make_row(), WHEN)
        self.assertEqual(self.factory.connections_made, 1)
        await builder.close()
        for _ in range(50):
            if not self.factory.protocols:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual(self.factory.protocols, {})

    async def test_closed_connection_retried_once(self) -> None:
        """A connection closed before any answer is retried once, within the deadline."""
        answer = ok_answer({"second": "try"})

        def flaky(request: Request) -> bytes | int:
            if len(self.site.requests) == 1:
                request.transport.loseConnection()
                return NOT_DONE_YET
            return answer(request)

        self.site.respond = flaky
        built = await self.builder(self.listen()).build(make_row(), WHEN)
        self.assertEqual(restore(built).kwargs, {"second": "try"})
        self.assertEqual(len(self.site.requests), 2)

    async def test_always_closing_server_fails_transiently(self) -> None:
        """A server that always hangs up gets two tries, then a transient error."""

        def hang_up(request: Request) -> int:
            request.transport.loseConnection()
            return NOT_DONE_YET

        self.site.respond = hang_up
        exc = await self.build_error(self.builder(self.listen()))
        self.assertTrue(exc.transient)
        self.assertEqual(len(self.site.requests), 2)

    async def test_close_cancels_in_flight(self) -> None:
        """close() cancels builds still waiting on the site, leaving no timer behind."""
        self.site.respond = lambda request: NOT_DONE_YET
        builder = self.builder(self.listen(), webserver_timeout_secs=30.0)
        d = builder.build(make_row(), WHEN)
        while not self.site.requests:
            await deferLater(reactor, 0.01)
        await builder.close()
        self.failureResultOf(d, defer.CancelledError)

    async def test_build_after_close_opens_no_connection(self) -> None:
        """A build asked for after close() fails at once and never reaches the
        site: its connection attempt would outlive the daemon's stop."""
        port = self.listen()
        builder = self.builder(port)
        await builder.close()
        self.failureResultOf(builder.build(make_row(), WHEN), defer.CancelledError)
        await deferLater(reactor, 0.05)
        self.assertEqual(self.site.requests, [])
        self.assertEqual(self.factory.connections_made, 0)

    async def test_job_runs_in_worker(self) -> None:
        """The site's pickle, stored by the daemon, is run by a real rq worker."""
        client = redis_db15()
        self.addCleanup(client.close)
        self.addCleanup(client.flushdb)
        records = os.path.abspath(self.mktemp())
        self.site.respond = ok_answer({"record_file": records, "from": "site"})
        # This rq (2.12) refuses Frappe's "site::uuid" ids: the style meant for it.
        built = await self.builder(self.listen(), frappe_job_id_style="uuid").build(
            make_row(), WHEN)
        enqueue_like_store(client, built)
        await run_worker(self, ["default"])
        [entry] = jobfuncs.read_records(records)
        self.assertEqual(entry["kwargs"], {"from": "site"})
        self.assertEqual(entry["job"]["meta"]["task"], "BTU-00001")

    async def test_server_errors_are_transient(self) -> None:
        """500, 502, 503 and 429 are worth retrying."""
        builder = self.builder(self.listen())
        for code in (500, 502, 503, 429):
            self.site.respond = status_answer(code, b'{"exc_type": "Boom"}')
            exc = await self.build_error(builder)
            self.assertTrue(exc.transient, code)
            self.assertIn(f"HTTP {code}", str(exc))

    async def test_client_errors_are_permanent(self) -> None:
        """403 (naming Frappe's exc_type and the token setting) and 404 are not retried."""
        builder = self.builder(self.listen())
        forbidden = {"exc_type": "PermissionError", "exc": "x" * 500}
        self.site.respond = status_answer(403, json.dumps(forbidden).encode())
        exc = await self.build_error(builder)
        self.assertFalse(exc.transient)
        self.assertIn("HTTP 403", str(exc))
        self.assertIn("PermissionError", str(exc))
        self.assertIn("webserver_token", str(exc))
        self.site.respond = status_answer(404, b"<html>not found</html>", b"text/html")
        exc = await self.build_error(builder)
        self.assertFalse(exc.transient)

    async def test_redirect_not_followed(self) -> None:
        """A redirect (e.g. to https) is reported, not followed with the token."""

        def redirect(request: Request) -> bytes:
            request.redirect(b"https://evil.example/steal")
            return b""

        self.site.respond = redirect
        exc = await self.build_error(self.builder(self.listen()))
        self.assertFalse(exc.transient)
        self.assertIn("redirect", str(exc))
        self.assertEqual(len(self.site.requests), 1)

    async def test_malformed_answers(self) -> None:
        """Bodies that are not Frappe's byte array fail with a short, clear reason."""
        builder = self.builder(self.listen())
        good = list(pickle.dumps(("f", None, (), {}), protocol=pickle.HIGHEST_PROTOCOL))
        cases = [
            (b"{not json", "not JSON"),
            (b"<!DOCTYPE html><html><body>Maintenance</body></html>", "not JSON"),
            (b'{"exc": "x"}', "no 'message'"),
            (b"[1, 2, 3]", "no 'message'"),
            (b'{"message": "pong"}', "not a non-empty byte array"),
            (b'{"message": []}', "not a non-empty byte array"),
            (b'{"message": null}', "not a non-empty byte array"),
            (json.dumps({"message": good[:-1] + ["x"]}).encode(), "not integers"),
            (json.dumps({"message": [*good[:3], 1.5, *good[3:]]}).encode(), "not integers"),
            (json.dumps({"message": [*good[:3], True, *good[3:]]}).encode(), "not integers"),
            (json.dumps({"message": [*good[:3], 256, *good[3:]]}).encode(), "outside 0..255"),
            (json.dumps({"message": [*good[:3], -1, *good[3:]]}).encode(), "outside 0..255"),
            (json.dumps({"message": [1, 2, 3]}).encode(), "not a pickle"),
        ]
        for body, reason in cases:
            self.site.respond = status_answer(200, body, b"text/html")
            exc = await self.build_error(builder)
            self.assertFalse(exc.transient, body[:40])
            self.assertIn(reason, str(exc))
            self.assertLess(len(str(exc)), 200)

    async def test_declared_huge_body_refused_unread(self) -> None:
        """A Content-Length over 16 MiB is refused at once, without waiting for the body."""

        def huge(request: Request) -> int:
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", b"%d" % (frappe_http.MAX_BODY_BYTES + 1))
            request.write(b'{"message": [')
            return NOT_DONE_YET

        self.site.respond = huge
        exc = await self.build_error(self.builder(self.listen(), webserver_timeout_secs=30.0))
        self.assertIn(f"larger than {frappe_http.MAX_BODY_BYTES} bytes", str(exc))
        self.assertFalse(exc.transient)

    async def test_streamed_huge_body_cut_off(self) -> None:
        """A body without Content-Length is dropped once past the limit, not read to the end."""
        chunk = b"1, " * (1 << 18)  # 768 KiB
        cap = 4 * frappe_http.MAX_BODY_BYTES
        site = self.site

        @implementer(IPullProducer)
        class Endless:
            """Writes a chunk each time the connection's buffer drains (back-pressure)."""

            def __init__(self, request: Request) -> None:
                self.request = request

            def resumeProducing(self) -> None:
                if site.bytes_sent > cap:
                    self.request.unregisterProducer()
                    self.request.finish()
                    return
                site.bytes_sent += len(chunk)
                self.request.write(chunk)

            def stopProducing(self) -> None:
                pass

        def stream(request: Request) -> int:
            request.setHeader(b"content-type", b"application/json")
            request.write(b'{"message": [')
            request.registerProducer(Endless(request), False)
            return NOT_DONE_YET

        self.site.respond = stream
        exc = await self.build_error(self.builder(self.listen(), webserver_timeout_secs=30.0))
        self.assertIn(f"larger than {frappe_http.MAX_BODY_BYTES} bytes", str(exc))
        self.assertLess(self.site.bytes_sent, 2 * frappe_http.MAX_BODY_BYTES)

    async def test_hanging_server_times_out(self) -> None:
        """A site that never answers fails transiently after webserver_timeout_secs."""
        self.site.respond = lambda request: NOT_DONE_YET
        started = time.monotonic()
        exc = await self.build_error(self.builder(self.listen(), webserver_timeout_secs=0.5))
        elapsed = time.monotonic() - started
        self.assertTrue(exc.transient)
        self.assertIn("within 0.5 s", str(exc))
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 5)

    async def test_connection_refused_is_transient(self) -> None:
        """Nobody listening on the port is a transient error."""
        probe = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        free = probe.getHost().port
        await defer.maybeDeferred(probe.stopListening)
        exc = await self.build_error(self.builder(free))
        self.assertTrue(exc.transient)
        self.assertIn("request failed", str(exc))

    async def test_cancel_aborts(self) -> None:
        """Cancelling a build aborts the request."""
        self.site.respond = lambda request: NOT_DONE_YET
        builder = self.builder(self.listen(), webserver_timeout_secs=30.0)
        d = builder.build(make_row(), WHEN)
        while not self.site.requests:
            await deferLater(reactor, 0.01)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)

    async def test_token_not_logged(self) -> None:
        """Neither errors nor log events carry the token."""
        builder = self.builder(self.listen())
        self.site.respond = status_answer(500, TOKEN.encode())
        with capturedLogs() as events:
            await self.build_error(builder)
            self.site.respond = ok_answer({})
            await builder.build(make_row(), WHEN)
        self.assertNotIn("s3cr3t", repr(list(events)))

    async def test_https_with_test_ca(self) -> None:
        """HTTPS to 127.0.0.1 checks the certificate against the site name and the given CA."""
        port = self.listen(tls=True)
        builder = self.builder(
            port,
            webserver_scheme="https",
            webserver_host_header="site1.local",
            webserver_ca_file=str(self.tls.ca_file),
        )
        built = await builder.build(make_row(), WHEN)
        self.assertEqual(restore(built).kwargs, {"hello": "world"})
        self.assertEqual(self.site.requests[0]["headers"][b"host"], [b"site1.local"])

    async def test_https_wrong_host_refused(self) -> None:
        """A certificate for site1.local does not pass for other.local."""
        port = self.listen(tls=True)
        builder = self.builder(
            port,
            webserver_scheme="https",
            webserver_host_header="other.local",
            webserver_ca_file=str(self.tls.ca_file),
        )
        exc = await self.build_error(builder)
        self.assertTrue(exc.transient)
        self.assertIn("TLS certificate is not valid for other.local", str(exc))
        self.assertEqual(self.site.requests, [])

    async def test_https_checks_address_without_host_header(self) -> None:
        """Without webserver_host_header the name checked is webserver_ip, which the cert lacks."""
        port = self.listen(tls=True)
        ca_file = str(self.tls.ca_file)
        builder = self.builder(port, webserver_scheme="https", webserver_ca_file=ca_file)
        await self.build_error(builder)
        self.assertEqual(self.site.requests, [])

    async def test_https_untrusted_ca_refused(self) -> None:
        """Without the test CA (system trust store only) the certificate is refused."""
        port = self.listen(tls=True)
        builder = self.builder(port, webserver_scheme="https", webserver_host_header="site1.local")
        exc = await self.build_error(builder)
        self.assertIn("certificate verify failed", str(exc))
        self.assertEqual(self.site.requests, [])

    def test_bad_ca_file(self) -> None:
        """A CA file without certificates stops construction."""
        path = Path(self.mktemp())
        path.write_text("not a certificate\n")
        self.assertRaises(
            ValueError,
            make_builder,
            make_config(job_builder="frappe", webserver_ca_file=str(path)),
            reactor,
        )
