"""Tests for btu_twisted.daemon.parts, and the order the daemon's services list their parts in."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from btu_twisted.daemon.parts import Part, Parts, service_part


class FakeService:
    def __init__(self, calls: list[str], name: str) -> None:
        self.calls, self.name, self.running = calls, name, 0

    def startService(self) -> None:
        self.running = 1
        self.calls.append(f"start {self.name}")

    def stopService(self) -> None:
        self.running = 0
        self.calls.append(f"stop {self.name}")


class PartsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls: list[str] = []

    def part(self, name: str, go_on: bool | None = None) -> Part:
        def start() -> bool | None:
            self.calls.append(f"start {name}")
            return go_on

        def stop() -> None:
            self.calls.append(f"stop {name}")

        return Part(name, start, stop)

    def test_started_in_order_stopped_in_reverse(self) -> None:
        parts = Parts(self.part("a"), None, Part("b", stop=lambda: self.calls.append("stop b")),
                      self.part("c"))
        self.assertEqual(parts.names, ["a", "b", "c"])
        self.assertTrue(self.successResultOf(ensureDeferred(parts.start())))
        self.successResultOf(ensureDeferred(parts.stop()))
        self.assertEqual(self.calls, ["start a", "start c", "stop c", "stop b", "stop a"])

    def test_a_start_saying_false_starts_nothing_after_it(self) -> None:
        parts = Parts(self.part("a", go_on=False), self.part("b"))
        self.assertFalse(self.successResultOf(ensureDeferred(parts.start())))
        self.assertEqual(self.calls, ["start a"])

    def test_an_awaited_start_finishes_before_the_next(self) -> None:
        gate: Deferred[None] = Deferred()
        parts = Parts(Part("slow", lambda: gate), self.part("b"))
        started = ensureDeferred(parts.start())
        self.assertEqual(self.calls, [])
        gate.callback(None)
        self.assertTrue(self.successResultOf(started))
        self.assertEqual(self.calls, ["start b"])

    def test_a_failing_stop_is_logged_and_the_rest_stop(self) -> None:
        def broken() -> None:
            raise RuntimeError("boom")

        parts = Parts(self.part("a"), Part("broken", stop=broken))
        with capturedLogs() as events:
            self.successResultOf(ensureDeferred(parts.stop()))
        self.assertEqual(self.calls, ["stop a"])
        self.assertEqual([e["service"] for e in events if "log_failure" in e], ["broken"])
        self.flushLoggedErrors(RuntimeError)

    def test_a_service_is_stopped_only_while_it_runs(self) -> None:
        one, two = FakeService(self.calls, "one"), FakeService(self.calls, "two")
        parts = Parts(service_part("one", one, one.startService), service_part("two", two))
        self.successResultOf(ensureDeferred(parts.start()))
        self.successResultOf(ensureDeferred(parts.stop()))
        self.assertEqual(self.calls, ["start one", "stop one"])


class DaemonOrderTests(SynchronousTestCase):
    """Today's order, written down: a change to it is a decision, not an accident."""

    def test_one_site(self) -> None:
        from btu_twisted.config import parse_config
        from btu_twisted.daemon.service import BtuService
        from tests.test_frappe_bench import COMMON, make_bench

        bench = make_bench(Path(self.mktemp()), COMMON,
                           {"a.local": {"db_name": "_aaaa", "db_password": "pw-a"}})
        config, _ = parse_config({"frappe_bench_path": str(bench), "frappe_site_name": "a.local",
                                  "socket_path": self.mktemp(), "metrics_port": 9999})
        service = BtuService(config, MemoryReactorClock())
        self.assertEqual(service.parts.names, [
            "schedules file", "mariadb", "redis", "builder", "prefix lease", "job ids",
            "socket", "checks", "metrics",
        ])
        # Schedule health follows jobs from before the timer enqueues any until after it stops.
        self.assertEqual(service.scheduling.names,
                         ["prefix lease", "schedule health", "timer", "planner", "refresh",
                          "changes"])
