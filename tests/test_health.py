"""A service's state (ok, down, refusing), its log lines and its metrics, on a Clock."""

from __future__ import annotations

import re

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest

from btu_twisted.health import Dependency
from btu_twisted.records import iso_utc
from btu_twisted.ops.metrics import Metrics
from tests.fakes import EPOCH

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
FORBIDDEN = "HTTP 403 FORBIDDEN (PermissionError); check webserver_token"


def lines(events: list[dict[str, object]], level: LogLevel) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level") == level]


class RefusingTests(unittest.TestCase):
    """A site answering 401/403 is neither ok nor down."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.site = Dependency("Frappe site", self.clock)

    def test_refusing_is_one_error_line_then_one_info_line(self) -> None:
        """The first refusal logs one error naming the reason; more refusals within the hour
        log nothing; the next success logs one info line and the state is ok again."""
        with capturedLogs() as events:
            self.assertTrue(self.site.refused(FORBIDDEN))
            for _ in range(100):
                self.clock.advance(30)
                self.assertFalse(self.site.refused(FORBIDDEN))
                self.assertEqual(self.site.state, "refusing")
            self.assertTrue(self.site.up, "a refusing site answers: not an outage")
            self.site.succeeded()
        [error] = lines(events, LogLevel.error)
        self.assertIn("Frappe site is refusing the daemon's requests: HTTP 403", error)
        self.assertIn("runs are dropped", error)
        [info] = lines(events, LogLevel.info)
        self.assertIn("Frappe site accepts the daemon's requests again after 3000.0 s", info)
        self.assertEqual(self.site.state, "ok")
        self.assertEqual(self.site.snapshot()["last_error"], None)

    def test_repeated_hourly_with_a_count(self) -> None:
        """A refusal that goes on is reported again at the first refusal an hour or more
        after the last report, with how long and how many were refused since."""
        with capturedLogs() as events:
            self.site.refused(FORBIDDEN)
            for _ in range(7):  # one a minute, up to minute 7
                self.clock.advance(60)
                self.site.refused(FORBIDDEN)
            self.clock.advance(3600 - 7 * 60 - 1)
            self.site.refused(FORBIDDEN)  # 3599 s after the first line: not yet
            self.assertEqual(len(lines(events, LogLevel.error)), 1)
            self.clock.advance(1)
            self.site.refused(FORBIDDEN)
            errors = lines(events, LogLevel.error)
            self.assertEqual(len(errors), 2, errors)
            self.assertIn("still refusing the daemon's requests after 3600 s", errors[1])
            self.assertIn("(9 refused since the last report)", errors[1])
            self.clock.advance(1800)
            self.site.refused(FORBIDDEN)
            self.assertEqual(len(lines(events, LogLevel.error)), 2)
            self.clock.advance(1800)
            self.site.refused(FORBIDDEN)
            errors = lines(events, LogLevel.error)
        self.assertEqual(len(errors), 3, errors)
        self.assertIn("after 7200 s (2 refused since the last report)", errors[2])

    def test_refusing_then_down_then_refusing(self) -> None:
        """A refusing site that stops answering is down (one outage line, no 'accepts
        again'); when it answers with a refusal again, the outage ends and refusing
        starts again with its own error line."""
        with capturedLogs() as events:
            self.site.refused(FORBIDDEN)
            self.clock.advance(10)
            self.assertTrue(self.site.failed("request failed (ConnectionRefusedError)"))
            self.assertEqual(self.site.state, "down")
            self.assertIsNone(self.site.snapshot()["refusing_since"])
            self.clock.advance(10)
            self.assertTrue(self.site.refused(FORBIDDEN))
        self.assertEqual(self.site.state, "refusing")
        errors = lines(events, LogLevel.error)
        self.assertEqual(len(errors), 3, errors)
        self.assertIn("is unavailable", errors[1])
        self.assertIn("is refusing", errors[2])
        infos = lines(events, LogLevel.info)
        self.assertEqual(len(infos), 1, infos)
        self.assertIn("available again after 10.0 s", infos[0])
        self.assertEqual((self.site.outages, self.site.refusals), (1, 2))

    def test_snapshot_times_are_iso(self) -> None:
        """Status shows when a state began as ISO 8601 UTC, never raw unix seconds."""
        self.assertEqual(
            self.site.snapshot(),
            {"state": "ok", "down_since": None, "refusing_since": None, "last_error": None,
             "outages": 0, "refusals": 0},
        )
        self.site.refused(FORBIDDEN)
        snapshot = self.site.snapshot()
        self.assertEqual(snapshot["state"], "refusing")
        self.assertEqual(snapshot["refusing_since"], "2027-01-15T08:00:00Z")
        self.assertEqual(snapshot["last_error"], FORBIDDEN)
        self.clock.advance(90)
        self.site.failed("timeout")
        self.assertEqual(self.site.snapshot()["down_since"], "2027-01-15T08:01:30Z")
        self.assertRegex(str(iso_utc(1795891785.6119757)), ISO)


class MetricsStateTests(unittest.TestCase):
    """``btu_dependency_state`` names the state; ``btu_dependency_up`` is 1 only when ok."""

    def test_gauges_follow_the_state(self) -> None:
        """ok -> refusing -> down -> ok, read as a scrape would read them."""
        clock = Clock()
        site = Dependency("Frappe site", clock)
        metrics = Metrics()
        metrics.watch(lambda: 0, {"site": site})

        def read() -> tuple[float | None, dict[str, float | None]]:
            get = metrics.registry.get_sample_value
            states = {
                state: get("btu_dependency_state", {"service": "site", "state": state})
                for state in ("ok", "down", "refusing")
            }
            return get("btu_dependency_up", {"service": "site"}), states

        self.assertEqual(read(), (1.0, {"ok": 1.0, "down": 0.0, "refusing": 0.0}))
        site.refused(FORBIDDEN)
        self.assertEqual(read(), (0.0, {"ok": 0.0, "down": 0.0, "refusing": 1.0}))
        site.failed("timeout")
        self.assertEqual(read(), (0.0, {"ok": 0.0, "down": 1.0, "refusing": 0.0}))
        site.succeeded()
        self.assertEqual(read(), (1.0, {"ok": 1.0, "down": 0.0, "refusing": 0.0}))
