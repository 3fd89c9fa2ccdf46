"""What the Redis gateway reports when txredisapi cannot set up a connection, on a Clock.

txredisapi is replaced by a stand-in pool whose factory says what txredisapi's
says (``connectionError("Redis error: could not auth: ...")``) and whose commands
wait until the test fires them, as commands do while no connection is usable.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python import log as legacy_log
from twisted.trial import unittest

from btu_twisted.redis_target import RedisTarget
from btu_twisted.store import gateway as redis_gateway
from btu_twisted.store.gateway import RedisGateway, RedisRefusedError
from tests.fakes import EPOCH

WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


class FakeFactory:
    """The parts of txredisapi's RedisFactory the gateway looks at."""

    def __init__(self) -> None:
        self.stopped = False
        self.size = 0
        self.disconnectCalled = False
        self.deferred: Deferred[Any] | None = Deferred()
        self.errors: list[str] = []

    def connectionError(self, why: str) -> None:
        self.errors.append(why)
        if self.deferred is not None:
            d, self.deferred = self.deferred, None
            d.errback(ValueError(why))


class FakePool:
    """Commands wait (no usable connection) until the test fires them."""

    def __init__(self) -> None:
        self._factory = FakeFactory()
        self.waiting: list[Deferred[Any]] = []

    def execute_command(self, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        return d

    def disconnect(self) -> Deferred[None]:
        return defer.succeed(None)


class GatewayRefusalTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.pools: list[FakePool] = []

        def new_pool(**params: Any) -> FakePool:
            self.pools.append(FakePool())
            return self.pools[-1]

        self.patch(txredisapi, "lazyConnectionPool", new_pool)
        self.gateway = RedisGateway(self.clock, "127.0.0.1", 6379, database=3,
                                    password="s3cr3t")
        self.gateway.start()

    def say(self, message: str) -> None:
        """What txredisapi tells the factory when a connection's set-up fails."""
        self.pools[-1]._factory.connectionError(message)

    def test_refused_password_is_the_error_and_the_outage_line(self) -> None:
        """A command waiting while AUTH is refused fails, at its deadline, with
        'Redis refused the password (WRONGPASS ...)'; the outage line says so at once."""
        with capturedLogs() as events:
            d = self.gateway.command("PING")
            self.say(f"Redis error: could not auth: {WRONGPASS}")
            self.assertEqual(self.gateway.health.state, "down")
            self.assertNoResult(d)
            self.clock.advance(5)
            error = self.failureResultOf(d, RedisRefusedError).value
        self.assertEqual(str(error), f"Redis refused the password ({WRONGPASS})")
        [line] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(line, f"Redis is unavailable: Redis refused the password ({WRONGPASS})"
                               " (retrying with backoff)")

    def test_select_refusals(self) -> None:
        """NOAUTH at SELECT means no password was given; another SELECT error names the
        database. Neither ever shows the password, even if Redis echoed it."""
        d = self.gateway.command("PING")
        self.say("Redis error: could not set dbid=3: NOAUTH Authentication required.")
        self.clock.advance(5)
        self.assertEqual(str(self.failureResultOf(d, RedisRefusedError).value),
                         "Redis wants a password and rq_password is not set"
                         " (NOAUTH Authentication required.)")
        d = self.gateway.command("PING")
        self.say("Redis error: could not set dbid=3: ERR DB index is out of range s3cr3t")
        self.clock.advance(5)
        self.assertEqual(str(self.failureResultOf(d, RedisRefusedError).value),
                         "Redis refused to select database 3 (ERR DB index is out of range ***)")

    def test_a_dropped_connection_is_not_a_refusal(self) -> None:
        """'Lost connection' during AUTH is the connection failing: the command's own
        deadline reports it, as before."""
        d = self.gateway.command("PING")
        self.say("Redis error: could not auth: Lost connection")
        self.assertEqual(self.gateway.health.state, "ok")
        self.clock.advance(5)
        self.failureResultOf(d, defer.TimeoutError)
        self.assertEqual(self.gateway.health.last_error, "no reply within 5 s")

    def test_an_old_refusal_does_not_explain_a_new_timeout(self) -> None:
        """A refusal seen before a command started (Redis went away since, no AUTH was
        tried for it) is not given as that command's reason."""
        self.say(f"Redis error: could not auth: {WRONGPASS}")
        self.clock.advance(1)
        d = self.gateway.command("PING")
        self.clock.advance(5)
        self.failureResultOf(d, defer.TimeoutError)

    def test_a_cancel_stays_a_cancel(self) -> None:
        """A caller cancelling its command gets CancelledError, refusal or not."""
        d = self.gateway.command("PING")
        self.say(f"Redis error: could not auth: {WRONGPASS}")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)

    def test_success_clears_the_refusal(self) -> None:
        """Once a command succeeds (the password was fixed on the Redis side), the outage
        ends and a later timeout is a timeout again."""
        with capturedLogs() as events:
            d = self.gateway.command("PING")
            self.say(f"Redis error: could not auth: {WRONGPASS}")
            self.pools[-1].waiting[-1].callback("PONG")
            self.assertEqual(self.successResultOf(d), "PONG")
            self.assertEqual(self.gateway.health.state, "ok")
            d = self.gateway.command("PING")
            self.clock.advance(5)
        self.failureResultOf(d, defer.TimeoutError)
        infos = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]
        self.assertEqual(len(infos), 1, infos)
        self.assertIn("Redis is available again", infos[0])

    def test_refusal_after_a_drop_is_said_once_more(self) -> None:
        """Already down because the connection dropped, the first refusal gets one more
        error line (the news: the password no longer works); later ones get none."""
        with capturedLogs() as events:
            self.gateway.health.failed("ConnectionError: Lost connection")
            for _ in range(3):
                self.say(f"Redis error: could not auth: {WRONGPASS}")
        errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 2, errors)
        self.assertEqual(errors[1], f"Redis is still unavailable: Redis refused the password"
                                    f" ({WRONGPASS})")


class QuietTxredisapiTests(unittest.TestCase):
    def test_txredisapi_lines_are_debug_events(self) -> None:
        """After start, txredisapi's legacy log lines and its ClientService's retry lines
        are debug events; Twisted's own ClientService and legacy log are untouched."""
        redis_gateway.quiet_txredisapi()
        redis_gateway.quiet_txredisapi()  # idempotent
        with capturedLogs() as events:
            txredisapi.log.msg("Discarding dead connection.")
            txredisapi.ClientService._log.info("Scheduling retry {n}", n=1)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.debug, LogLevel.debug])
        self.assertEqual(formatEvent(events[0]), "txredisapi: Discarding dead connection.")
        self.assertIsNot(txredisapi.log, legacy_log)
        self.assertIs(txredisapi.log.startLogging, legacy_log.startLogging)
        from twisted.application.internet import ClientService

        self.assertTrue(issubclass(txredisapi.ClientService, ClientService))
        self.assertIsNot(txredisapi.ClientService, ClientService)


class FakeSentinel:
    """txredisapi.Sentinel's surface: master_for hands out a FakePool."""

    def __init__(self, pools: list[FakePool]) -> None:
        self.pools = pools
        self.discovery_timeout = 10

    def discover_master(self, service: str) -> Deferred[Any]:
        return Deferred()

    def master_for(self, service: str, **kwargs: Any) -> FakePool:
        self.pools.append(FakePool())
        return self.pools[-1]

    def disconnect(self) -> Deferred[None]:
        return defer.succeed(None)


class DemotedMasterTests(unittest.TestCase):
    """Behind Sentinel, a READONLY reply means the master was demoted under us."""

    def test_readonly_reply_drops_the_connections(self) -> None:
        pools: list[FakePool] = []
        self.patch(txredisapi, "Sentinel", lambda *a, **k: FakeSentinel(pools))
        target = RedisTarget(kind="sentinel", sentinels=(("127.0.0.1", 26379),), service="m")
        gateway = RedisGateway(Clock(), target=target)
        gateway.start()
        closed: list[str] = []

        class Connection:
            class transport:  # noqa: N801  (what txredisapi's connections have)
                @staticmethod
                def loseConnection() -> None:
                    closed.append("closed")

        pools[-1]._factory.pool = [Connection(), Connection()]  # type: ignore[attr-defined]
        d = gateway.command("SET", "k", "v")
        pools[-1].waiting[0].errback(txredisapi.ResponseError("ERR wrong number of arguments"))
        self.failureResultOf(d, txredisapi.ResponseError)
        self.assertEqual(closed, [])
        d = gateway.command("SET", "k", "v")
        pools[-1].waiting[1].errback(
            txredisapi.ResponseError("READONLY You can't write against a read only replica."))
        self.failureResultOf(d, txredisapi.ResponseError)
        self.assertEqual(closed, ["closed", "closed"])
        self.assertEqual(gateway.health.state, "ok")
