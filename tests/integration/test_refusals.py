"""Failures are visible, not silent: a site refusing the token, Redis refusing the password.

A site answering 401/403 drops every run; it must show as "refusing" (status,
metrics, one error line) instead of "ok".  A wrong Redis password must be
reported as such — the one-line exit message at start, the outage line while
running — instead of "no reply within 5 s", and txredisapi's own lines (one per
connection per attempt) must stay below info level.

Redis here is a throw-away ``redis-server`` each test starts on a free port (with
``--requirepass`` where the test needs it) and stops, so these tests share no
Redis database with anyone.  The site is a twisted.web stand-in in the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import redis
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.server import Site

from btu_twisted.jobs.builders import BuildError, make_builder
from btu_twisted.cli.daemon import request
from btu_twisted.daemon.protocol import ControlFactory
from btu_twisted.store.gateway import RedisGateway, RedisRefusedError
from tests.integration.daemon import ROOT, make_service, wait_for
from tests.integration.redis_servers import RedisServer, free_port
from tests.integration.support import TWISTD, TestDatabase, config_values, write_config
from tests.test_builders import (
    FakeFrappe,
    TrackingFactory,
    make_config,
    make_row,
    ok_answer,
    status_answer,
)
from tests.test_health import ISO

PASSWORD = "right-" + uuid.uuid4().hex[:8]
FORBIDDEN = status_answer(403, b'{"exc_type": "PermissionError"}')
UNAUTHORIZED = status_answer(401, b'{"exc_type": "AuthenticationError"}')
# What txredisapi (and the ClientService it reconnects with) says on its own.
TXREDISAPI_WORDS = ("could not auth", "could not set dbid", "Discarding dead connection",
                    "Scheduling retry", "txredisapi")


async def error_of(d: Any) -> BaseException:
    """The exception ``d`` fails with (the test fails if it succeeds)."""
    try:
        result = await d
    except Exception as e:  # noqa: BLE001 - returned to the test
        return e
    raise AssertionError(f"expected a failure, got {result!r}")


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class ThrowawayRedis(RedisServer):
    """A ``redis-server`` of this test's own on a free port; ``stop`` ends it."""

    def __init__(self, password: str | None = None) -> None:
        directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="btu-refusal-redis-"))
        super().__init__(directory, "redis", ["--requirepass", password] if password else [])
        self.password = password

    def client(self, **options: object) -> redis.Redis:
        return super().client(password=self.password, **options)

    async def stop(self) -> None:
        await super().stop()
        shutil.rmtree(self.directory, True)


async def throwaway_redis(case: unittest.TestCase, password: str | None = None) -> RedisServer:
    server = await ThrowawayRedis(password).start()
    case.addCleanup(server.stop)
    return server


def txredisapi_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events txredisapi or its reconnecting ClientService emitted."""
    found = []
    for event in events:
        namespace = str(event.get("log_namespace", ""))
        if (namespace.startswith("txredisapi") or "ClientService" in namespace
                or any(word in formatEvent(event) for word in TXREDISAPI_WORDS[:4])):
            found.append(event)
    return found


def loud(events: list[dict[str, Any]]) -> list[str]:
    """The events above debug level (or without one), as text."""
    return [formatEvent(e) for e in events if e.get("log_level") != LogLevel.debug]


def outage_lines(events: list[dict[str, Any]], service: str) -> list[str]:
    return [formatEvent(e) for e in events
            if str(e.get("log_format", "")).startswith("{service} is unavailable")
            and e.get("service") == service]


# --- Redis: the gateway ------------------------------------------------------------


class GatewayPasswordTests(unittest.TestCase):
    """RedisGateway against a redis-server that wants a password."""

    timeout = 60

    async def setUp(self) -> None:
        self.server = await throwaway_redis(self, PASSWORD)

    def gateway(self, password: str | None) -> RedisGateway:
        # Well above a local connect + AUTH even on a loaded machine: a refusal must be
        # what the commands fail with, not the deadline.
        gateway = RedisGateway(reactor, "127.0.0.1", self.server.port, password=password,
                               timeout=3.0)
        gateway.start()
        self.addCleanup(gateway.stop)
        return gateway

    async def test_wrong_password_is_said_once_and_txredisapi_is_quiet(self) -> None:
        """Every command fails with 'Redis refused the password (WRONGPASS ...)', not a
        timeout; the outage is one error line however often txredisapi reconnects, whose
        own lines are debug events only; once Redis takes that password, the outage ends."""
        gateway = self.gateway("wrong-password")
        with capturedLogs() as events:
            for _ in range(3):
                error = await error_of(gateway.command("PING"))
                self.assertIsInstance(error, RedisRefusedError, error)
                self.assertIn("Redis refused the password (WRONGPASS", str(error))
                await sleep(0.3)
            snapshot = gateway.health.snapshot()
            self.assertEqual(snapshot["state"], "down")
            self.assertIn("refused the password", str(snapshot["last_error"]))
            self.assertRegex(str(snapshot["down_since"]), ISO)
            # The admin fixes it on the Redis side: the next command works.
            await deferToThread(self.server.client().config_set, "requirepass", "wrong-password")
            self.assertEqual(await gateway.command("PING"), "PONG")
        self.assertEqual(gateway.health.state, "ok")
        [outage] = outage_lines(events, "Redis")
        self.assertIn("Redis is unavailable: Redis refused the password (WRONGPASS", outage)
        self.assertNotIn("no reply within", outage)
        self.assertNotIn("wrong-password", "\n".join(formatEvent(e) for e in events))
        own = txredisapi_events(events)
        self.assertTrue(any("could not auth" in formatEvent(e) for e in own), own)
        self.assertEqual(loud(own), [])
        self.assertTrue(any("Redis is available again" in line for line in loud(events)))

    async def test_password_changed_under_a_running_daemon(self) -> None:
        """Redis takes a new password and drops its clients: whatever the outage line
        says first (the drop, or the refusal), one error line says Redis refused the
        password, and it is said once however often the gateway tries again."""
        gateway = self.gateway(PASSWORD)
        self.assertEqual(await gateway.command("PING"), "PONG")
        admin = self.server.client()
        self.addCleanup(admin.close)
        with capturedLogs() as events:
            await deferToThread(admin.config_set, "requirepass", "a-new-password")
            await deferToThread(admin.client_kill_filter, _type="normal", skipme=True)
            for _ in range(3):
                await error_of(gateway.command("PING"))
                await sleep(0.3)
        self.assertIn("refused the password", str(gateway.health.last_error))
        errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertLessEqual(len(errors), 2, errors)
        refused = [line for line in errors if "Redis refused the password (WRONGPASS" in line]
        self.assertEqual(len(refused), 1, errors)
        self.assertEqual(loud(txredisapi_events(events)), [])

    async def test_missing_password_is_said(self) -> None:
        """No rq_password for a Redis that wants one: the reason says so (NOAUTH)."""
        gateway = self.gateway(None)
        with capturedLogs() as events:
            error = await error_of(gateway.command("PING"))
        self.assertIsInstance(error, RedisRefusedError)
        self.assertIn("Redis wants a password and rq_password is not set (NOAUTH", str(error))
        self.assertEqual(len(outage_lines(events, "Redis")), 1)
        self.assertEqual(loud(txredisapi_events(events)), [])

    async def test_right_password_works(self) -> None:
        """The same server with the right password answers and nothing is reported."""
        gateway = self.gateway(PASSWORD)
        with capturedLogs() as events:
            self.assertEqual(await gateway.command("PING"), "PONG")
        self.assertEqual(gateway.health.state, "ok")
        self.assertEqual(loud(events), [])


# --- Redis: the daemon under twistd -----------------------------------------------------


class TwistdPasswordTests(unittest.TestCase):
    """``twistd -n btu`` with a wrong ``rq_password``, as an admin would run it."""

    timeout = 90

    async def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="btu-refusal-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.server = await throwaway_redis(self, PASSWORD)
        self.db = TestDatabase()
        self.addCleanup(self.db.drop)

    def run_twistd(self, **overrides: Any) -> subprocess.Popen[bytes]:
        values = config_values(self.db.name, redis_db=0, rq_port=self.server.port,
                               rq_password="wrong-password",
                               socket_path=str(self.dir / "btu.sock"), **overrides)
        config = self.dir / "btu.toml"
        write_config(config, values)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", f"--logfile={self.dir / 'btu.log'}", "btu",
                      "--config", str(config)],
            cwd=str(self.dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        return proc

    def log(self) -> str:
        path = self.dir / "btu.log"
        return path.read_text() if path.exists() else ""

    async def test_wrong_password_at_start_exits_1_with_one_line(self) -> None:
        """Start-up checks Redis: exit status 1 and one stderr line that says Redis refused
        the password; no traceback, no 'no reply within'."""
        proc = self.run_twistd()
        out, err = await deferToThread(proc.communicate, timeout=60)
        text = err.decode()
        self.assertEqual(proc.returncode, 1, text + self.log()[-2000:])
        lines = text.strip().splitlines()
        self.assertEqual(len(lines), 1, text)
        self.assertIn("refused the password", lines[0])
        self.assertIn("WRONGPASS", lines[0])
        self.assertNotIn("no reply within", lines[0])
        self.assertNotIn("wrong-password", text + self.log())
        self.assertNotIn("Traceback", text + self.log())

    async def test_wrong_password_while_running_is_one_outage_line(self) -> None:
        """With startup_without_database_connections the daemon runs; its log has one
        outage line saying Redis refused the password however often it retries, none of
        txredisapi's own lines at info, and ``status`` gives the same reason."""
        proc = self.run_twistd(startup_without_database_connections=True)
        await wait_for(lambda: "refused the password" in self.log() or proc.poll() is not None,
                       timeout=30)
        if proc.poll() is not None:
            self.fail(f"twistd exited: {proc.communicate()[1].decode()[-2000:]}")
        # Long enough for several reconnections and retries of the timer, planner, refresh.
        await sleep(6)
        # What ``btu status`` sends and reads.
        reply = await deferToThread(request, str(self.dir / "btu.sock"), "status", None)
        status = json.loads(reply)
        proc.send_signal(signal.SIGTERM)
        out, err = await deferToThread(proc.communicate, timeout=30)
        log = self.log()
        redis_state = status["services"]["redis"]
        self.assertEqual(redis_state["state"], "down")
        self.assertIn("Redis refused the password (WRONGPASS", redis_state["last_error"])
        outages = [line for line in log.splitlines() if "Redis is unavailable" in line]
        self.assertEqual(len(outages), 1, log[-3000:])
        self.assertIn("Redis is unavailable: Redis refused the password (WRONGPASS", outages[0])
        for word in TXREDISAPI_WORDS:
            self.assertNotIn(word, log, log[-3000:])
        self.assertNotIn("Traceback", log)
        self.assertNotIn("wrong-password", log)


# --- the Frappe site ------------------------------------------------------------------


class SiteRefusalCase(unittest.TestCase):
    timeout = 60

    def serve(self, site: FakeFrappe) -> int:
        factory = TrackingFactory(Site(site))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(factory.close_all)
        return int(port.getHost().port)


class BuilderRefusalTests(SiteRefusalCase):
    """The frappe builder against a local site answering 403, then 401, then a job."""

    async def test_builder_marks_the_site_refusing(self) -> None:
        """403 and 401 fail the build for good (the run is dropped) and leave the site
        'refusing' with the reason: one error line for all of them; the first job the
        site hands out ends it with one info line."""
        site = FakeFrappe(FORBIDDEN)
        config = make_config(job_builder="frappe", webserver_port=self.serve(site))
        builder = make_builder(config, reactor)
        self.addCleanup(builder.close)
        health = builder.health  # type: ignore[attr-defined]
        with capturedLogs() as events:
            for respond in (FORBIDDEN, FORBIDDEN, UNAUTHORIZED):
                site.respond = respond
                error = await error_of(builder.build(make_row(), 1_767_225_600))
                self.assertIsInstance(error, BuildError)
                self.assertFalse(error.transient)  # type: ignore[attr-defined]
                self.assertEqual(health.state, "refusing")
            snapshot = health.snapshot()
            site.respond = ok_answer({"hello": "world"})
            await builder.build(make_row(), 1_767_225_600)
        self.assertEqual(health.state, "ok")
        self.assertIn("HTTP 401", snapshot["last_error"])
        self.assertIn("check webserver_token", snapshot["last_error"])
        self.assertRegex(snapshot["refusing_since"], ISO)
        self.assertEqual(len(site.requests), 4)
        errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("Frappe site is refusing the daemon's requests: HTTP 403", errors[0])
        infos = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.info]
        self.assertEqual(len([i for i in infos if "accepts the daemon's requests again" in i]), 1)


class DaemonRefusalTests(SiteRefusalCase):
    """A whole in-process daemon whose site answers 403: status and /metrics say so."""

    async def test_status_and_metrics_show_refusing(self) -> None:
        """While the site answers 403, ``status`` (over the socket protocol) shows the
        site 'refusing' with the reason and ISO times, /metrics has
        btu_dependency_state{state="refusing"} 1 and btu_dependency_up 0, and the log
        has one 'refusing' line however many runs were dropped; once the site answers,
        runs are enqueued and the site is ok again."""
        server = await throwaway_redis(self)
        db = TestDatabase(load_samples=False)
        self.addCleanup(db.drop)
        db.add_task("BTU-REC", "tests.jobfuncs.record", repr({"k": 1}))
        db.add_schedule("TS-R1", "BTU-REC", "* * * * * * *")
        db.add_schedule("TS-R2", "BTU-REC", "* * * * * * *")
        site = FakeFrappe(FORBIDDEN)
        values = config_values(
            db.name, redis_db=0, rq_port=server.port, job_builder="frappe",
            webserver_ip="127.0.0.1", webserver_port=self.serve(site),
            webserver_token="token k:s", webserver_timeout_secs=15, metrics_port=free_port(),
        )
        self.addCleanup(lambda: os.path.exists(values["socket_path"])
                        and os.unlink(values["socket_path"]))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        service, fatal = make_service(values)
        await service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        self.assertEqual(fatal, [])
        await wait_for(lambda: len(site.requests) >= 4, timeout=20)
        status = _status_over_protocol(service)
        site_state = status["services"]["site"]
        self.assertEqual(site_state["state"], "refusing", status)
        self.assertIn("HTTP 403", site_state["last_error"])
        self.assertRegex(site_state["refusing_since"], ISO)
        for when in (status["now"], status["started_at"], status["last_full_refresh"]["at"]):
            self.assertRegex(when, ISO)
        self.assertIsInstance(status["last_full_refresh"]["duration_secs"], float)
        self.assertNotIn("duration", status["last_full_refresh"])
        self.assertIsInstance(status["uptime_secs"], float)
        metrics = await _scrape(service.metrics_service.port)
        self.assertIn('btu_dependency_state{service="site",state="refusing"} 1.0', metrics)
        self.assertIn('btu_dependency_state{service="site",state="ok"} 0.0', metrics)
        self.assertIn('btu_dependency_up{service="site"} 0.0', metrics)
        self.assertEqual(status["enqueued"], 0)
        # One line for the site, none per schedule or per dropped run.
        errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(len(errors), 1, errors)

        site.respond = ok_answer({"k": 2})
        await wait_for(lambda: service.timer.stats.enqueued >= 1, timeout=20)
        status = _status_over_protocol(service)
        self.assertEqual(status["services"]["site"]["state"], "ok")
        self.assertRegex(status["last_enqueue"], ISO)
        metrics = await _scrape(service.metrics_service.port)
        self.assertIn('btu_dependency_up{service="site"} 1.0', metrics)
        await service.stopService()
        texts = [formatEvent(e) for e in events]
        refusing = [t for t in texts if "Frappe site is refusing" in t]
        self.assertEqual(len(refusing), 1, texts)
        self.assertEqual(len([t for t in texts if "accepts the daemon's requests again" in t]), 1)
        self.assertEqual([t for t in texts if "Frappe site is unavailable" in t], [])


def _status_over_protocol(service: Any) -> dict[str, Any]:
    """The status request as the socket serves it (the JSON a client would read)."""
    transport = StringTransport()
    protocol = ControlFactory(service, service._reactor).buildProtocol(None)
    protocol.makeConnection(transport)
    protocol.dataReceived(b'{"request_type": "status", "request_content": null}')
    protocol.connectionLost(None)
    return dict(json.loads(transport.value().decode()))


async def _scrape(port: int) -> str:
    response = await treq.get(f"http://127.0.0.1:{port}/metrics", persistent=False)
    return str(await response.text())

