"""The ways a config names its Redis, their contradictions, and secrets kept out of sight."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from btu_twisted.config import ConfigError, masked, parse_config
from btu_twisted.redis_target import mask_url, parse_url, target_of
from btu_twisted.daemon.tls import uses_tls
from tests.test_config import minimal


def without_host(**values: Any) -> dict[str, Any]:
    return minimal(**{"rq_host": None, "rq_port": None, **values})


class TargetTests(TestCase):
    def test_urls(self) -> None:
        self.assertEqual(
            parse_url("redis://u:p%40ss@h:7000/3"),
            dict(kind="tcp", host="h", port=7000, tls=False, database=3,
                 username="u", password="p@ss"),
        )
        self.assertEqual(parse_url("rediss://h")["tls"], True)
        self.assertEqual(parse_url("unix:///run/r.sock?db=4"),
                         dict(kind="unix", path="/run/r.sock", database=4))
        for bad in ("http://h", "redis://h/x", "unix://", "redis://h/1?db=2", "redis://h?x=1"):
            self.assertRaises(ValueError, parse_url, bad)

    def test_config_to_target(self) -> None:
        config, _ = parse_config(without_host(rq_url="redis://btu:secret@h:7000/3"))
        target = target_of(config)
        self.assertEqual((target.host, target.port, target.database, target.username,
                          target.password), ("h", 7000, 3, "btu", "secret"))
        self.assertEqual(target.describe(), "redis://btu@h:7000/3")
        config, _ = parse_config(without_host(
            rq_sentinels=["10.0.0.1:26379", "[::1]:26380"], rq_sentinel_service="m",
            rq_sentinel_password="sp", rq_password="mp", rq_database=2))
        target = target_of(config)
        self.assertEqual(target.sentinels, (("10.0.0.1", 26379), ("::1", 26380)))
        self.assertEqual((target.kind, target.service, target.sentinel_password,
                          target.password, target.database), ("sentinel", "m", "sp", "mp", 2))
        self.assertNotIn("sp", repr(target).replace("sentinel", ""))
        config, _ = parse_config(minimal(rq_username="btu"))
        self.assertEqual(target_of(config).username, "btu")

    def test_secrets_in_urls_are_never_shown(self) -> None:
        config, _ = parse_config(without_host(rq_url="rediss://btu:hunter2@h:6380/0"))
        self.assertEqual(masked(config)["rq_url"], "rediss://btu:********@h:6380/0")
        self.assertNotIn("hunter2", repr(config))
        self.assertEqual(mask_url("redis://h:1/0"), "redis://h:1/0")
        error = self.assertRaises(ConfigError, parse_config,
                                  without_host(rq_url="redis://btu:hunter2@h:port/0"))
        self.assertNotIn("hunter2", str(error))
        error = self.assertRaises(ConfigError, parse_config, without_host(rq_url=["hunter2"]))
        self.assertNotIn("hunter2", str(error))

    def test_contradictions_are_one_line_each(self) -> None:
        cases = {
            "rq_url: conflicts with rq_host": minimal(rq_url="redis://h"),
            "rq_sentinels: conflicts with rq_url": without_host(
                rq_url="redis://h", rq_sentinels=["h:1"], rq_sentinel_service="m"),
            "rq_port: only used with rq_host": without_host(rq_url="redis://h", rq_port=1),
            "rq_password: also given in rq_url": without_host(rq_url="redis://:p@h",
                                                              rq_password="q"),
            "rq_tls_ca_file: only used with a rediss:// rq_url": without_host(
                rq_url="redis://h", rq_tls_ca_file=__file__),
            "rq_tls_cert_file: the client certificate needs rq_tls_key_file": without_host(
                rq_url="rediss://h", rq_tls_cert_file=__file__),
            "rq_sentinel_service: required with rq_sentinels": without_host(
                rq_sentinels=["h:26379"]),
            "rq_sentinel_password: only used with rq_sentinels": minimal(
                rq_sentinel_password="x"),
            "rq_sentinels: 'h' is not host:port": without_host(
                rq_sentinels=["h"], rq_sentinel_service="m"),
            "rq_tls_ca_file: cannot read /nonexistent": without_host(
                rq_url="rediss://h", rq_tls_ca_file="/nonexistent"),
        }
        for expected, data in cases.items():
            error = self.assertRaises(ConfigError, parse_config, data)
            self.assertEqual(len(error.problems), 1, error.problems)
            self.assertTrue(error.problems[0].startswith(expected), error.problems)
        # A password kept out of the URL is fine.
        config, _ = parse_config(without_host(rq_url="redis://h", rq_password="q"))
        self.assertEqual(target_of(config).password, "q")

    def test_tls_keys_load_tls(self) -> None:
        """tls.uses_tls sees a rediss:// URL and the rq_tls_* keys; plain Redis does not."""
        plain = dict(job_builder="function")
        config, _ = parse_config(without_host(rq_url="redis://h", **plain))
        self.assertFalse(uses_tls(config))
        config, _ = parse_config(without_host(rq_url="rediss://h", **plain))
        self.assertTrue(uses_tls(config))
        config, _ = parse_config(without_host(rq_url="rediss://h", rq_tls_ca_file=__file__,
                                              **plain))
        self.assertTrue(uses_tls(config))
        config, _ = parse_config(without_host(rq_sentinels=["h:1"], rq_sentinel_service="m",
                                              **plain))
        self.assertFalse(uses_tls(config))
