"""``/metrics`` and ``status`` of a running daemon: they parse, and they move
when jobs are enqueued."""

from __future__ import annotations

import json
import socket

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from btu_twisted.daemon.protocol import ControlFactory
from tests.integration.daemon import make_service, wait_for
from tests.integration.support import config_values, fresh_services

DB = 13


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


class MetricsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.db, self.redis = fresh_services(self, DB)

    async def test_metrics_and_status_move_after_enqueues(self) -> None:
        """After a few every-second runs, the enqueued counter, the lateness
        histogram and ``status`` agree, and dependency gauges say up."""
        self.db.add_task("BTU-1", "tests.jobfuncs.record", queue="short")
        self.db.add_schedule("TS-1", "BTU-1", "* * * * * * *", queue="short")
        service, fatal = make_service(
            config_values(self.db.name, redis_db=DB, metrics_port=free_port())
        )
        await service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(fatal, [])
        await wait_for(lambda: service.timer.stats.enqueued >= 2, timeout=10)
        response = await treq.get(
            f"http://127.0.0.1:{service.metrics_service.port}/metrics", persistent=False
        )
        self.assertEqual(response.code, 200)
        found = samples(await response.text())
        enqueued = found[("btu_jobs_enqueued_total", (("queue", "short"),))]
        self.assertGreaterEqual(enqueued, 2)
        self.assertEqual(found[("btu_enqueue_lateness_seconds_count", ())], enqueued)
        self.assertEqual(found[("btu_dependency_up", (("service", "redis"),))], 1.0)
        self.assertEqual(found[("btu_dependency_up", (("service", "mariadb"),))], 1.0)
        self.assertGreater(found[("btu_full_refresh_last_success_timestamp_seconds", ())], 0)

        transport = StringTransport()
        protocol = ControlFactory(service, service._reactor).buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.dataReceived(b'{"request_type": "status", "request_content": null}')
        status = json.loads(transport.value().decode())
        self.assertGreaterEqual(status["enqueued"], 2)
        self.assertEqual(status["last_enqueued_schedule"], "TS-1")
        self.assertEqual(status["services"]["redis"]["state"], "ok")
        self.assertEqual(status["lateness"]["count"], status["enqueued"])
        self.assertIn("uptime_secs", status)
        protocol.connectionLost(None)
