"""A fatal start-up error ends the process even before the reactor runs, and a
reload applies only the keys that can change live."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from btu_twisted.config import parse_config
from btu_twisted.daemon.startup import FATAL_EXIT_SECS, exit_on_fatal
from btu_twisted.live_config import config_change

BASE = dict(full_refresh_internal_secs=3600, scheduler_polling_interval=60,
            time_zone_string="UTC", rq_host="127.0.0.1", rq_port=6379, socket_path="/tmp/x.sock",
            mysql_user="u", mysql_password="p", mysql_host="h", mysql_database="d",
            job_builder="function")


class _Reactor(Clock):
    """A reactor that is not running until ``run``; ``stop`` raises as the real one does."""

    def __init__(self) -> None:
        super().__init__()
        self.running = False
        self.when_running: list[Callable[[], object]] = []
        self.triggers: list[tuple[str, str, Any, tuple[Any, ...]]] = []
        self.stops = 0

    def callWhenRunning(self, f: Callable[..., object], *args: Any) -> None:
        if self.running:
            f(*args)
        else:
            self.when_running.append(lambda: f(*args))

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any) -> None:
        self.triggers.append((phase, event, f, args))

    def run(self) -> None:
        self.running = True
        for f in self.when_running:
            f()

    def stop(self) -> None:
        if not self.running:
            raise ReactorNotRunning()
        self.stops += 1


class ExitOnFatalTests(SynchronousTestCase):
    def setUp(self) -> None:
        import os

        written: list[bytes] = []
        self.patch(os, "write", lambda fd, data: written.append(data) or len(data))
        self.written = written

    def test_before_the_reactor_runs_the_stop_waits_for_it(self) -> None:
        """twistd starts the service before running the reactor: the stop must not
        be lost (it raised ReactorNotRunning, and the process ran on)."""
        reactor = _Reactor()
        fatal = exit_on_fatal(reactor)
        fatal("socket directory /run/x does not exist")
        self.assertEqual(self.written, [b"btu: socket directory /run/x does not exist\n"])
        self.assertEqual(reactor.stops, 0)
        self.assertEqual([t[:2] for t in reactor.triggers], [("after", "shutdown")])
        reactor.run()
        self.assertEqual(reactor.stops, 1)

    def test_a_shutdown_that_hangs_still_exits(self) -> None:
        reactor = _Reactor()
        reactor.run()
        exit_on_fatal(reactor)("cannot serve metrics")
        [call] = reactor.getDelayedCalls()
        self.assertEqual(call.getTime(), FATAL_EXIT_SECS)
        self.assertEqual(call.args, (1,))

    def test_a_second_fatal_error_is_said_but_stops_once(self) -> None:
        reactor = _Reactor()
        reactor.run()
        fatal = exit_on_fatal(reactor)
        fatal("one")
        fatal("two")
        self.assertEqual(len(self.written), 2)
        self.assertEqual(reactor.stops, 1)
        self.assertEqual(len(reactor.triggers), 1)


class ConfigChangeTests(SynchronousTestCase):
    def test_live_keys_apply_and_the_others_are_named(self) -> None:
        old, _ = parse_config(dict(BASE))
        new, _ = parse_config(dict(BASE, tracing_level="debug", socket_path="/tmp/y.sock",
                                   mysql_password="secret"))
        change = config_change(old, new)
        self.assertEqual(change.live, ("tracing_level",))
        self.assertEqual(change.restart, ("mysql_password", "socket_path"))
        self.assertEqual(change.config.tracing_level, "DEBUG")
        self.assertEqual(change.config.socket_path, "/tmp/x.sock")
        self.assertNotIn("secret", change.describe())
        self.assertEqual(change.describe(), "tracing_level is now 'DEBUG'; changed, taking "
                         "effect at the next restart: mysql_password, socket_path")

    def test_nothing_changed(self) -> None:
        old, _ = parse_config(dict(BASE))
        self.assertEqual(config_change(old, old).describe(), "config unchanged")
