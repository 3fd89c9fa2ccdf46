"""The tests flush only a Redis started for them (an admin's 6379 is theirs)."""

from __future__ import annotations

import os

from twisted.trial import unittest

from tests.integration.support import REDIS_HOST, REDIS_PORT, RUN_ID, OwnRedis, sync_redis


class FlushGuardTests(unittest.SynchronousTestCase):
    def test_another_server_is_refused_before_any_command(self) -> None:
        """A client pointed elsewhere (another port, another host) raises at FLUSHDB
        and FLUSHALL without connecting."""
        for host, port in ((REDIS_HOST, 6379 if REDIS_PORT != 6379 else 6380),
                           ("192.0.2.1", REDIS_PORT)):
            client = OwnRedis(host=host, port=port, db=9, socket_connect_timeout=0.1)
            self.addCleanup(client.close)
            with self.assertRaisesRegex(RuntimeError, "not one started for the tests"):
                client.flushdb()
            with self.assertRaisesRegex(RuntimeError, "not one started for the tests"):
                client.flushall()

    def test_the_tests_own_server_is_flushed(self) -> None:
        client = sync_redis(9)
        self.addCleanup(client.close)
        client.set("btu_guard_probe", "1")
        client.flushdb()
        self.assertEqual(client.dbsize(), 0)

    def test_a_server_without_the_recorded_run_id_is_refused(self) -> None:
        """The right port is not enough: the server must answer with the run_id its
        starter recorded (another server may have taken a port the tests let go)."""
        client = sync_redis(9)
        self.addCleanup(client.close)
        client.set("btu_guard_probe", "1")
        self.patch(os, "environ", {**os.environ, RUN_ID: "0" * 40})
        with self.assertRaisesRegex(RuntimeError, "not one started for the tests"):
            client.flushdb()
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != RUN_ID})
        with self.assertRaisesRegex(RuntimeError, "not one started for the tests"):
            client.flushall()
        self.assertEqual(client.get("btu_guard_probe"), b"1")
