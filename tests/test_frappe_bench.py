"""Bench mode: a three-line TOML runs a site; the bench's JSON fills the rest, the TOML wins."""

from __future__ import annotations

import io
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from btu_twisted.cli import main
from btu_twisted.config import ConfigError, from_bench, load_config, parse_config
from btu_twisted.frappe_bench import bench_id

SITE = "erp.example.com"
COMMON = {
    "bench_id": "prod-bench",
    "redis_queue": "redis://127.0.0.1:11000",
    "redis_cache": "redis://127.0.0.1:13000",
    "webserver_port": 8001,
    "rq_job_failure_ttl": 86400,
}
SITE_CONFIG = {
    "db_name": "_a1b2c3d4e5f6",
    "db_password": "s3cr3t-db",
    "db_type": "mariadb",
    "rq_results_ttl": 300,
}


def make_bench(root: Path, common: dict[str, Any] | None = None,
               sites: dict[str, dict[str, Any]] | None = None) -> Path:
    """A bench directory as ``bench init`` and ``bench new-site`` leave it (the JSON part)."""
    (root / "sites").mkdir(parents=True)
    (root / "sites" / "common_site_config.json").write_text(json.dumps(common or COMMON))
    for name, config in (sites if sites is not None else {SITE: SITE_CONFIG}).items():
        (root / "sites" / name).mkdir()
        (root / "sites" / name / "site_config.json").write_text(json.dumps(config))
    return root


class BenchModeTests(TestCase):
    def bench(self, common: dict[str, Any] | None = None,
              site: dict[str, Any] | None = None) -> Path:
        return make_bench(Path(self.mktemp()), common, {SITE: site or SITE_CONFIG})

    def three_lines(self, bench: Path, **more: Any) -> dict[str, Any]:
        return {"frappe_bench_path": str(bench), "frappe_site_name": SITE,
                "socket_path": "/run/btu_scheduler/btu.sock", **more}

    def problems(self, data: dict[str, Any]) -> list[str]:
        error = self.assertRaises(ConfigError, parse_config, data)
        return list(error.problems)

    def test_three_lines_run_a_site(self) -> None:
        """Database from the site, Redis and bench id from the bench, TTLs from either."""
        config, warnings = parse_config(self.three_lines(self.bench()))
        self.assertEqual(warnings, [])
        self.assertEqual(
            (config.mysql_database, config.mysql_user, config.mysql_password),
            ("_a1b2c3d4e5f6", "_a1b2c3d4e5f6", "s3cr3t-db"),
        )
        self.assertEqual((config.mysql_host, config.mysql_port), ("localhost", 3306))
        redis = (config.rq_host, config.rq_port, config.rq_database)
        self.assertEqual(redis, ("127.0.0.1", 11000, 0))
        self.assertIsNone(config.rq_password)
        self.assertEqual(config.rq_queue_prefix, "prod-bench:")
        self.assertEqual(config.redis_key_prefix, f"btu_scheduler:{SITE}:")
        self.assertEqual(config.job_builder, "frappe_site")
        self.assertEqual((config.webserver_port, config.webserver_host_header), (8001, SITE))
        self.assertEqual((config.result_ttl, config.failure_ttl), (300, 86400))
        self.assertEqual(config.time_zone_string, "UTC")

    def test_the_toml_wins(self) -> None:
        data = self.three_lines(self.bench(), mysql_host="db.internal", rq_queue_prefix="",
                                job_builder="frappe", webserver_token="k:s", result_ttl=60)
        config, _ = parse_config(data)
        self.assertEqual(config.mysql_host, "db.internal")
        self.assertEqual(config.rq_queue_prefix, "")
        self.assertEqual(config.job_builder, "frappe")
        self.assertEqual(config.result_ttl, 60)
        self.assertEqual(config.mysql_database, "_a1b2c3d4e5f6")  # still the bench's
        sources = from_bench(data).sources
        self.assertNotIn("mysql_host", sources)
        self.assertEqual(sources["mysql_database"], f"sites/{SITE}/site_config.json db_name")
        self.assertEqual(sources["rq_port"], "sites/common_site_config.json redis_queue")

    def test_site_values_override_the_benchs(self) -> None:
        """As Frappe's get_site_config: the site's own file first, then the bench's."""
        common = {**COMMON, "db_host": "10.0.0.5", "db_port": 3307}
        bench = self.bench(common, {**SITE_CONFIG, "db_port": 3308})
        config, _ = parse_config(self.three_lines(bench))
        self.assertEqual((config.mysql_host, config.mysql_port), ("10.0.0.5", 3308))

    def test_bench_id_from_the_path_when_unset(self) -> None:
        """Frappe's get_bench_id: the real path, leading '/' dropped, '/' as '-'."""
        common = {k: v for k, v in COMMON.items() if k != "bench_id"}
        bench = self.bench(common)
        config, _ = parse_config(self.three_lines(bench))
        expected = os.path.realpath(bench).strip("/").replace("/", "-")
        self.assertEqual(config.rq_queue_prefix, expected + ":")
        self.assertEqual(bench_id("/home/frappe/frappe-bench/", {}), "home-frappe-frappe-bench")

    def test_redis_url_with_password_and_database(self) -> None:
        common = {**COMMON, "redis_queue": "redis://:p%40ss@redis.internal:6380/2"}
        config, _ = parse_config(self.three_lines(self.bench(common)))
        self.assertEqual((config.rq_host, config.rq_port, config.rq_database),
                         ("redis.internal", 6380, 2))
        self.assertEqual(config.rq_password, "p@ss")
        self.assertNotIn("p@ss", repr(config))

    def test_any_redis_queue_maps_to_rq_keys(self) -> None:
        """rediss://, unix://, ACL users and Sentinel become rq_url, rq_username, rq_sentinels."""
        cases = {
            "rediss": ({**COMMON, "redis_queue": "rediss://q.example.com:6380/2"},
                       dict(rq_url="rediss://q.example.com:6380/2", rq_host=None)),
            "unix": ({**COMMON, "redis_queue": "unix:///run/redis.sock?db=1"},
                     dict(rq_url="unix:///run/redis.sock?db=1", rq_port=None)),
            "acl user": ({**COMMON, "redis_queue": "redis://bench:pw@127.0.0.1:11000"},
                         dict(rq_host="127.0.0.1", rq_username="bench", rq_password="pw")),
            "sentinel": ({**COMMON, "redis_queue_sentinel_enabled": 1,
                          "redis_queue_sentinels": ["10.0.0.1:26379", "10.0.0.2:26379"],
                          "redis_queue_master_service": "rq-master",
                          "redis_queue_sentinel_password": "sent-pw",
                          "redis_queue_master_username": "rq-user",
                          "redis_queue_master_password": "master-pw"},
                         dict(rq_sentinels=("10.0.0.1:26379", "10.0.0.2:26379"),
                              rq_sentinel_service="rq-master", rq_sentinel_password="sent-pw",
                              rq_username="rq-user", rq_password="master-pw", rq_host=None)),
        }
        for name, (common, expected) in cases.items():
            config, _ = parse_config(self.three_lines(self.bench(common)))
            for key, value in expected.items():
                self.assertEqual(getattr(config, key), value, (name, key))
            for secret in ("pw", "sent-pw", "master-pw"):
                self.assertNotIn(f"{secret}@", repr(config))
                self.assertNotIn(f"'{secret}'", repr(config))

    def test_what_it_cannot_follow_is_named(self) -> None:
        """use_rq_auth (and Sentinel without its nodes) give one line naming what to set."""
        cases = {
            "redis_queue_sentinels": {**COMMON, "redis_queue_sentinel_enabled": 1},
            "~btu_scheduler:* ~rq:*": {**COMMON, "use_rq_auth": 1},
        }
        for words, common in cases.items():
            problems = self.problems(self.three_lines(self.bench(common)))
            self.assertEqual(len(problems), 1, problems)
            self.assertIn(words, problems[0])
        # Each goes once the TOML names its own Redis (or, for use_rq_auth, its user).
        for common in cases.values():
            data = self.three_lines(self.bench(common), rq_host="127.0.0.1", rq_port=6379,
                                    rq_password="x")
            self.assertEqual(parse_config(data)[0].rq_port, 6379)
        data = self.three_lines(self.bench(cases["~btu_scheduler:* ~rq:*"]), rq_username="btu",
                                rq_password="x")
        self.assertEqual(parse_config(data)[0].rq_username, "btu")

    def test_a_wrong_bench_or_site_is_one_clear_line(self) -> None:
        bench = self.bench()
        cases = {
            "is not a Frappe bench": self.three_lines(bench / "sites"),
            "has no site 'other.example.com'": {**self.three_lines(bench),
                                                "frappe_site_name": "other.example.com"},
            "is not a site name": {**self.three_lines(bench), "frappe_site_name": "../sites"},
            "frappe_site_name: required": {k: v for k, v in self.three_lines(bench).items()
                                           if k != "frappe_site_name"},
        }
        for words, data in cases.items():
            problems = self.problems(data)
            self.assertEqual(len(problems), 1, problems)
            self.assertIn(words, problems[0])

    def test_broken_json_and_postgres_sites(self) -> None:
        bench = self.bench()
        (bench / "sites" / SITE / "site_config.json").write_text('{"db_name": "x",')
        [problem] = self.problems(self.three_lines(bench))
        self.assertIn(f"sites/{SITE}/site_config.json is not valid JSON", problem)
        postgres = self.bench(site={**SITE_CONFIG, "db_type": "postgres"})
        [problem] = self.problems(self.three_lines(postgres))
        self.assertIn("BTU needs MariaDB", problem)
        [problem] = self.problems(self.three_lines(self.bench(site={"db_password": "s3cr3t-db"})))
        self.assertIn("has no db_name", problem)
        self.assertNotIn("s3cr3t", problem)

    def test_load_config_reads_a_three_line_file(self) -> None:
        bench = self.bench()
        path = Path(self.mktemp())
        path.write_text(
            f'frappe_bench_path = "{bench}"\nfrappe_site_name = "{SITE}"\n'
            'socket_path = "/run/btu_scheduler/btu.sock"\n'
        )
        self.assertEqual(len(tomllib.loads(path.read_text())), 3)
        os.chmod(path, 0o640)
        config, warnings = load_config(str(path))
        self.assertEqual(warnings, [])
        self.assertEqual(config.frappe_bench_path, str(bench))
        self.assertEqual(config.mysql_database, "_a1b2c3d4e5f6")

    def test_print_config_shows_the_database_inside_a_redis_url(self) -> None:
        """A rediss:// redis_queue becomes rq_url; its database (and user) are what the
        daemon uses, so print-config shows them, FROM the URL, not rq_database's default."""
        common = {**COMMON, "redis_queue": "rediss://btu:pw@127.0.0.1:11000/3"}
        path = Path(self.mktemp())
        path.write_text(f'frappe_bench_path = "{self.bench(common)}"\nfrappe_site_name = '
                        f'"{SITE}"\nsocket_path = "/run/btu.sock"\n')
        os.chmod(path, 0o600)
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["--config", str(path), "print-config"], stdout=out, stderr=err), 0,
                         err.getvalue())
        rows = {line.split()[0]: line.split() for line in out.getvalue().splitlines()[2:]}
        self.assertEqual(rows["rq_database"][1:3], ["3", "rq_url"])
        self.assertEqual(rows["rq_username"][1:3], ["btu", "rq_url"])
        self.assertEqual(rows["rq_password"][1:3], ["********", "rq_url"])
        self.assertNotIn(":pw@", out.getvalue())

    def test_print_config_says_where_each_value_came_from(self) -> None:
        """'btu print-config' in bench mode: a FROM column naming file and key; secrets masked."""
        path = Path(self.mktemp())
        path.write_text(f'frappe_bench_path = "{self.bench()}"\nfrappe_site_name = "{SITE}"\n'
                        'socket_path = "/run/btu.sock"\nmysql_host = "db.internal"\n')
        os.chmod(path, 0o600)
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["--config", str(path), "print-config"], stdout=out, stderr=err), 0)
        self.assertEqual(err.getvalue(), "")
        rows = {line.split()[0]: line.split() for line in out.getvalue().splitlines()[2:]}
        self.assertEqual(rows["mysql_database"][1:],
                         ["_a1b2c3d4e5f6", f"sites/{SITE}/site_config.json", "db_name"])
        self.assertEqual(rows["mysql_host"][1:], ["db.internal", "config", "file"])
        site_file = f"sites/{SITE}/site_config.json"
        self.assertEqual(rows["mysql_password"][1:3], ["********", site_file])
        self.assertEqual(rows["rq_queue_prefix"][1:],
                         ["prod-bench:", "sites/common_site_config.json", "bench_id"])
        self.assertEqual(rows["metrics_host"][1:], ["127.0.0.1", "default"])
        self.assertNotIn("s3cr3t", out.getvalue())
