"""Every kind of Redis a bench uses, for real: an ACL user, TLS, a unix socket, Sentinel.

Each test starts its own ``redis-server`` processes on free ports (see
redis_servers.py) and stops them, so nothing here shares a Redis database with
other tests.  The gateway and the prefix guard run in the trial reactor; the
CLI's redis-py client is checked against the same config; the Sentinel test
runs a whole ``BtuService`` through a failover.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from btu_twisted.cli.common import Context
from btu_twisted.config import Config, parse_config
from btu_twisted.store.prefix_guard import PrefixGuard, PrefixRefused
from btu_twisted.store.gateway import RedisGateway, RedisRefusedError
from btu_twisted.redis_target import target_of
from tests.integration.daemon import ROOT, make_service, wait_for
from tests.integration.redis_servers import (
    free_port,
    make_certificates,
    server_directory,
    start_server,
)
from tests.integration.support import TestDatabase, config_values
from tests.integration.test_faults import EVERY, collect_jobs, duplicates, missing_runs

ADMIN = "admin-secret"
PASSWORD = "btu-secret"
RULE = "~btu_scheduler:* ~rq:* +@all -@dangerous +role"


def config_for(**redis: Any) -> Config:
    values = config_values("unused", rq_host=None, rq_port=None, rq_database=None)
    values = {k: v for k, v in values.items() if v is not None}
    return parse_config({**values, **redis})[0]


def gateway_for(case: unittest.TestCase, config: Config) -> RedisGateway:
    gateway = RedisGateway(reactor, target=target_of(config))
    gateway.start()
    case.addCleanup(gateway.stop)
    return gateway


def cli_ping(config: Config) -> Any:
    """``btu``'s redis-py client, built from the same config, in a thread."""
    ctx = Context(out=io.StringIO(), err=io.StringIO(), json=False, config_path="-",
                  config_explicit=True, _config=config)
    client = ctx.redis()
    try:
        return client.ping()
    finally:
        client.close()


class AclTests(unittest.TestCase):
    """A Redis whose default user has a password, and two ACL users."""

    timeout = 60

    async def setUp(self) -> None:
        directory = server_directory(self)
        self.server = await start_server(self, directory, "acl", "--requirepass", ADMIN)
        admin = self.server.client(password=ADMIN)
        admin.execute_command("ACL", "SETUSER", "btu", "on", f">{PASSWORD}", *RULE.split())
        # What Frappe's use_rq_auth user may do (COMPAT 8.6), roughly.
        admin.execute_command("ACL", "SETUSER", "bench", "on", f">{PASSWORD}", "~rq:*",
                              "+@all", "-@dangerous")
        admin.close()

    def config(self, user: str, password: str = PASSWORD) -> Config:
        return config_for(rq_url=f"redis://{user}@127.0.0.1:{self.server.port}/0",
                          rq_password=password)

    async def test_user_with_the_rule_works(self) -> None:
        """The documented rule lets the daemon take its prefix; btu's client logs in too."""
        config = self.config("btu")
        gateway = gateway_for(self, config)
        guard = PrefixGuard(reactor, gateway, "btu_scheduler:", "site", lambda _: None)
        await guard.acquire()
        self.addCleanup(guard.stop)
        admin = self.server.client(password=ADMIN)
        self.assertEqual(admin.get("btu_scheduler:owner"), b"site site")
        admin.close()
        self.assertTrue(await deferToThread(cli_ping, config))

    async def test_user_without_our_keys_is_one_clear_line(self) -> None:
        """Frappe's RQ-only user: refused at the prefix, naming the ACL rule needed."""
        gateway = gateway_for(self, self.config("bench"))
        guard = PrefixGuard(reactor, gateway, "btu_scheduler:", "site", lambda _: None)
        error = await self.assertFailure(Deferred.fromCoroutine(guard.acquire()), PrefixRefused)
        text = str(error)
        self.assertIn("Redis user 'bench' may not write btu_scheduler:owner", text)
        self.assertIn("NOPERM", text)
        self.assertIn(RULE, text)
        self.assertNotIn(PASSWORD, text)

    async def test_daemon_runs_as_a_user_with_the_rule(self) -> None:
        """The documented rule is enough for the whole daemon: it plans and enqueues."""
        db = TestDatabase(load_samples=False)
        self.addCleanup(db.drop)
        db.add_task("BTU-REC", "tests.jobfuncs.record")
        db.add_schedule("TS-1", "BTU-REC", EVERY)
        values = config_values(db.name, rq_port=self.server.port, rq_database=0,
                               rq_username="btu", rq_password=PASSWORD)
        service, fatal = make_service(values)
        await service.startService()
        self.addCleanup(service.stopService)
        admin = self.server.client(password=ADMIN)
        self.addCleanup(admin.close)
        await wait_for(lambda: len(collect_jobs(admin)) >= 2 or fatal, timeout=30)
        self.assertEqual(fatal, [])
        self.assertEqual(duplicates(collect_jobs(admin)), {})

    async def test_daemon_refuses_the_user_at_start(self) -> None:
        """The whole service: one fatal line, StartupError's, naming the rule."""
        db = TestDatabase(load_samples=False)
        self.addCleanup(db.drop)
        values = config_values(db.name, rq_port=self.server.port, rq_database=0,
                               rq_username="bench", rq_password=PASSWORD)
        service, fatal = make_service(values)
        await service.startService()
        await wait_for(lambda: fatal, timeout=30)
        await service.stopService()
        self.assertEqual(len(fatal), 1, fatal)
        self.assertIn("may not write", fatal[0])
        self.assertIn(RULE, fatal[0])

    async def test_wrong_password_of_a_user_is_said(self) -> None:
        gateway = gateway_for(self, self.config("btu", "wrong-one"))
        error = await self.assertFailure(gateway.command("PING"), RedisRefusedError)
        self.assertIn("Redis refused the password of user 'btu'", str(error))
        self.assertNotIn("wrong-one", str(error))


class TlsTests(unittest.TestCase):
    """rediss:// with a CA, a server certificate and a client certificate the test makes."""

    timeout = 60

    async def setUp(self) -> None:
        directory = server_directory(self)
        self.certs = await deferToThread(make_certificates, directory)
        self.tls_port = free_port()
        self.server = await start_server(
            self, directory, "tls", "--tls-port", str(self.tls_port),
            "--tls-cert-file", str(self.certs["server.crt"]),
            "--tls-key-file", str(self.certs["server.key"]),
            "--tls-ca-cert-file", str(self.certs["ca.crt"]), "--tls-auth-clients", "yes",
        )

    def config(self, client_cert: bool = True, host: str = "localhost") -> Config:
        extra = dict(rq_tls_cert_file=str(self.certs["client.crt"]),
                     rq_tls_key_file=str(self.certs["client.key"])) if client_cert else {}
        return config_for(rq_url=f"rediss://{host}:{self.tls_port}/1",
                          rq_tls_ca_file=str(self.certs["ca.crt"]), **extra)

    async def test_daemon_and_cli_connect_over_tls(self) -> None:
        for host in ("localhost", "127.0.0.1"):
            config = self.config(host=host)
            gateway = gateway_for(self, config)
            self.assertEqual(await gateway.command("SET", "btu_scheduler:tls", host), "OK")
            self.assertEqual(await gateway.eval("return redis.call('GET', KEYS[1])",
                                                ["btu_scheduler:tls"], []), host)
            self.assertTrue(await deferToThread(cli_ping, config))
            await gateway.stop()

    async def test_without_client_certificate_is_refused(self) -> None:
        gateway = gateway_for(self, self.config(client_cert=False))
        await self.assertFailure(gateway.command("PING"), Exception)
        self.assertEqual(gateway.health.state, "down")

    async def test_a_tls_config_loads_the_real_tls_classes(self) -> None:
        """tls.without_tls keeps pyOpenSSL for a rediss:// config (and only hides it
        otherwise): in a fresh interpreter, txredisapi gets Twisted's own TLS factory."""
        script = (
            "import json, sys\n"
            "from btu_twisted.config import parse_config\n"
            "from btu_twisted.daemon.tls import without_tls\n"
            "config, _ = parse_config(json.loads(sys.argv[1]))\n"
            "with without_tls(config) as hidden:\n"
            "    import txredisapi\n"
            "from twisted.protocols import tls\n"
            "print(hidden, txredisapi.TLSMemoryBIOFactory is tls.TLSMemoryBIOFactory)\n"
        )
        plain = config_values("x", job_builder="function")
        tls = {**{k: v for k, v in plain.items()
                  if k not in ("rq_host", "rq_port", "rq_database")},
               "rq_url": f"rediss://localhost:{self.tls_port}/1",
               "rq_tls_ca_file": str(self.certs["ca.crt"])}
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for values, expected in ((plain, "True False"), (tls, "False True")):
            done = await deferToThread(
                subprocess.run, [sys.executable, "-c", script, json.dumps(values)],
                capture_output=True, text=True, env=env, timeout=60)
            self.assertEqual(done.stdout.strip(), expected, done.stderr)


class UnixSocketTests(unittest.TestCase):
    timeout = 60

    async def test_daemon_and_cli_connect_over_a_unix_socket(self) -> None:
        directory = server_directory(self)
        path = directory / "redis.sock"
        server = await start_server(self, directory, "unix", "--unixsocket", str(path),
                                    "--unixsocketperm", "700")
        config = config_for(rq_url=f"unix://{path}?db=3")
        gateway = gateway_for(self, config)
        self.assertEqual(await gateway.command("SET", "btu_scheduler:unix", "1"), "OK")
        self.assertTrue(await deferToThread(cli_ping, config))
        admin = server.client(db=3)
        self.assertEqual(admin.get("btu_scheduler:unix"), b"1")
        admin.close()


# Seconds after the promotion by which the daemon enqueues on the new master again:
# its connections back off while the dead master is still named (up to ~3 s),
# then the timer's own backoff; generous for a loaded machine.
RECOVERY = 10.0

SENTINEL_CONF = """\
sentinel monitor mymaster 127.0.0.1 {port} 1
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 5000
sentinel parallel-syncs mymaster 1
"""


class SentinelTests(unittest.TestCase):
    """A master, a replica and a Sentinel; the master is killed under a running daemon."""

    timeout = 120

    async def setUp(self) -> None:
        self.dir = server_directory(self)
        self.master = await start_server(self, self.dir, "master")
        self.replica = await start_server(self, self.dir, "replica", "--replicaof",
                                          "127.0.0.1", str(self.master.port))
        self.sentinel = await start_server(
            self, self.dir, "sentinel", sentinel=SENTINEL_CONF.format(port=self.master.port))

    def sentinel_says(self) -> tuple[str, int] | None:
        client = self.sentinel.client()
        try:
            found = client.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
        finally:
            client.close()
        return (found[0].decode(), int(found[1])) if found else None

    def sentinel_knows_replica(self) -> bool:
        client = self.sentinel.client()
        try:
            return bool(client.execute_command("SENTINEL", "replicas", "mymaster"))
        finally:
            client.close()

    async def poll(self, check: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = await deferToThread(check)
            if found:
                return found
            await deferLater(reactor, 0.2, lambda: None)
        raise AssertionError(f"not within {timeout} s: {check}")

    async def test_unknown_service_is_one_clear_line(self) -> None:
        config = config_for(rq_sentinels=[f"127.0.0.1:{self.sentinel.port}"],
                            rq_sentinel_service="nosuch")
        gateway = RedisGateway(reactor, target=target_of(config))
        gateway.start()
        error = await self.assertFailure(gateway.command("PING"), RedisRefusedError)
        self.assertIn("names a master for service 'nosuch'", str(error))
        self.assertEqual(gateway.health.state, "down")
        await gateway.stop()
        # txredisapi leaves the discovery in progress to time out on its own.
        await deferLater(reactor, 3.5, lambda: None)

    async def test_refused_password_behind_sentinel_is_said(self) -> None:
        """txredisapi's own Sentinel protocol would hang on a refused AUTH; ours says it."""
        config = config_for(rq_sentinels=[f"127.0.0.1:{self.sentinel.port}"],
                            rq_sentinel_service="mymaster", rq_password="not-this")
        gateway = gateway_for(self, config)
        error = await self.assertFailure(gateway.command("PING"), RedisRefusedError)
        self.assertIn("Redis refused the password", str(error))
        self.assertNotIn("not-this", str(error))

    async def test_daemon_follows_a_failover(self) -> None:
        """Every-second schedule; the master SIGKILLed: the daemon enqueues on the
        promoted replica, no scheduled time twice, none missed across the failover."""
        await self.poll(self.sentinel_knows_replica, 30)
        db = TestDatabase(load_samples=False)
        self.addCleanup(db.drop)
        db.add_task("BTU-REC", "tests.jobfuncs.record")
        db.add_schedule("TS-1", "BTU-REC", EVERY)
        values = config_values(db.name, rq_database=0, scheduler_polling_interval=1,
                               rq_sentinels=[f"127.0.0.1:{self.sentinel.port}"],
                               rq_sentinel_service="mymaster")
        del values["rq_host"], values["rq_port"]
        service, fatal = make_service(values)
        await service.startService()
        self.addCleanup(service.stopService)
        started = time.time()

        def jobs_on(server: Any) -> list[Any]:
            client = server.client()
            try:
                return collect_jobs(client)
            finally:
                client.close()

        await self.poll(lambda: len(jobs_on(self.master)) >= 3, 30)
        await self.poll(lambda: self.replica.client().info("replication")
                        .get("master_link_status") == "up", 30)
        self.master.kill()
        killed = time.time()
        await self.poll(lambda: self.sentinel_says() == ("127.0.0.1", self.replica.port), 60)
        promoted = time.time()
        recovered = promoted + RECOVERY
        await self.poll(lambda: sum(when > recovered
                                    for _, when, _ in jobs_on(self.replica)) >= 3, 40)
        await service.stopService()
        stopped = time.time()
        self.assertEqual(fatal, [])
        jobs = await deferToThread(jobs_on, self.replica)
        self.assertEqual(duplicates(jobs), {})
        # As in any Redis outage (test_faults.py): the runs between the kill and the
        # reconnection coalesce into one late run; every run before and after is there.
        missing = missing_runs(jobs, {"TS-1": EVERY}, started + 3, stopped - 3).get("TS-1", [])
        times = (f"started {started:.1f}, killed {killed:.1f}, promoted {promoted:.1f}, "
                 f"stopped {stopped:.1f}")
        self.assertEqual([t for t in missing if not killed - 1 <= t <= recovered], [], times)
        self.assertTrue(any(when > recovered for _, when, _ in jobs), times)
