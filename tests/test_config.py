"""Tests for btu_twisted.config: the Rust daemon's file still loads, and mistakes are named."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase

from btu_twisted.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    load_config,
    log_level,
    masked,
    parse_config,
    permission_warning,
    toml_fields,
)

HERE = Path(__file__).parent
RUST_FIXTURE = HERE / "fixtures" / "rust_btu_scheduler.toml"
EXAMPLE = HERE.parent / "etc" / "btu_scheduler.toml"

EMAIL_KEYS = [
    "email_address_from",
    "email_host_name",
    "email_host_port",
    "email_account_name",
    "email_account_password",
    "email_addresses",
    "email_on_level",
    "email_when_queuing",
]
RUST_KEYS = {
    "name",
    "environment_name",
    "full_refresh_internal_secs",
    "scheduler_polling_interval",
    "time_zone_string",
    "tracing_level",
    "startup_without_database_connections",
    "mysql_user",
    "mysql_password",
    "mysql_host",
    "mysql_port",
    "mysql_database",
    "rq_host",
    "rq_port",
    "socket_path",
    "socket_file_group_owner",
    "webserver_ip",
    "webserver_port",
    "webserver_host_header",
    "webserver_token",
    *EMAIL_KEYS,
}
REQUIRED = [
    "full_refresh_internal_secs",
    "scheduler_polling_interval",
    "time_zone_string",
    "mysql_user",
    "mysql_password",
    "mysql_host",
    "mysql_database",
    "rq_host",
    "rq_port",
    "socket_path",
]
SECRETS = {
    "mysql_password": "sql-secret-1",
    "rq_password": "redis-secret-2",
    "webserver_token": "token key:web-secret-3",
}
EMAIL_WARNING = ", ".join(EMAIL_KEYS) + ": ignored: btu_twisted does not send e-mail"


def minimal(**changes: Any) -> dict[str, Any]:
    """The smallest valid table (job_builder 'function' needs no web server), with changes."""
    data: dict[str, Any] = {
        "full_refresh_internal_secs": 3600,
        "scheduler_polling_interval": 60,
        "time_zone_string": "UTC",
        "mysql_user": "u",
        "mysql_password": "p",
        "mysql_host": "localhost",
        "mysql_database": "db",
        "rq_host": "localhost",
        "rq_port": 11000,
        "socket_path": "/run/btu.sock",
        "job_builder": "function",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


class ConfigTestCase(TestCase):
    def problems(self, data: dict[str, Any]) -> list[str]:
        """The problems parse_config reports for data (failing if it accepts it)."""
        return self.assertRaises(ConfigError, parse_config, data).problems

    def assertOneProblem(self, data: dict[str, Any], expected: str) -> None:
        self.assertEqual(self.problems(data), [expected])

    def private_copy(self, source: Path, text: str | None = None) -> str:
        """Copy a file (or write text instead) to a temporary file only its owner can read.

        Git checks files out 0644, which would add a permission warning.
        """
        return self.write(source.read_text() if text is None else text, 0o600)

    def write(self, text: str, mode: int = 0o600) -> str:
        """Write text to a temporary config file with the given mode."""
        path = self.mktemp()
        Path(path).write_text(text)
        os.chmod(path, mode)
        return path


class RustCompatibilityTests(ConfigTestCase):
    def test_rust_fixture_loads(self) -> None:
        """The Rust daemon's file loads unchanged, warning only about the e-mail keys."""
        config, warnings = load_config(self.private_copy(RUST_FIXTURE))
        self.assertEqual(warnings, [EMAIL_WARNING])
        self.assertEqual(config.name, "BTU Scheduler Daemon")
        self.assertEqual(config.environment_name, "DEV")
        self.assertEqual(config.full_refresh_internal_secs, 900)
        self.assertEqual(config.scheduler_polling_interval, 60)
        self.assertEqual(config.time_zone_string, "America/Los_Angeles")
        self.assertEqual(config.tracing_level, "INFO")
        self.assertIs(config.startup_without_database_connections, False)
        self.assertEqual(config.mysql_user, "my_sql_user_name")
        self.assertEqual(config.mysql_password, "my_sql_account_password")
        self.assertEqual(config.mysql_port, 3313)
        self.assertEqual(config.mysql_database, "erpnext_db_13")
        self.assertEqual((config.rq_host, config.rq_port), ("127.0.0.1", 11000))
        self.assertEqual(config.socket_path, "/tmp/btu_scheduler.sock")
        self.assertEqual(config.socket_file_group_owner, "erpnext_group")
        self.assertEqual((config.webserver_ip, config.webserver_port), ("127.0.0.1", 8000))
        self.assertEqual(config.webserver_host_header, "erp.example.com")
        self.assertEqual(config.webserver_token, "token abc:def")

    def test_rust_fixture_gets_defaults_for_new_keys(self) -> None:
        """Keys the Rust daemon lacked take the defaults that reproduce its behaviour."""
        config, _ = load_config(self.private_copy(RUST_FIXTURE))
        self.assertEqual(config.job_builder, "frappe")
        self.assertIsNone(config.rq_password)
        self.assertEqual(config.rq_database, 0)
        self.assertEqual(config.rq_queue_prefix, "")
        self.assertEqual(config.socket_mode, 0o660)
        self.assertIsNone(config.webserver_scheme)
        self.assertIsNone(config.webserver_ca_file)
        self.assertEqual(config.webserver_timeout_secs, 30.0)
        self.assertIsNone(config.frappe_site_name)
        self.assertEqual(config.frappe_user, "Administrator")
        self.assertEqual(config.frappe_job_id_style, "v15")
        self.assertIsNone(config.result_ttl)
        self.assertIsNone(config.failure_ttl)
        self.assertIsNone(config.misfire_grace_secs)
        self.assertIsNone(config.metrics_port)
        self.assertEqual(config.metrics_host, "127.0.0.1")

    def test_rust_fixture_has_only_rust_keys(self) -> None:
        """The fixture holds every Rust key and nothing btu_twisted added."""
        with open(RUST_FIXTURE, "rb") as stream:
            self.assertEqual(set(tomllib.load(stream)), RUST_KEYS)

    def test_default_path(self) -> None:
        """The default path is the Rust daemon's fixed one."""
        self.assertEqual(DEFAULT_CONFIG_PATH, "/etc/btu_scheduler/btu_scheduler.toml")


class ExampleTests(ConfigTestCase):
    def test_example_loads(self) -> None:
        """The shipped example loads with no warning at all."""
        config, warnings = load_config(self.private_copy(EXAMPLE))
        self.assertEqual(warnings, [])
        self.assertEqual(config.socket_path, "/run/btu_scheduler/btu_scheduler.sock")

    def test_example_documents_every_key(self) -> None:
        """Every key, new or Rust (e-mail included), appears in the example, set or commented."""
        text = EXAMPLE.read_text()
        for key in [spec.name for spec in toml_fields()] + EMAIL_KEYS:
            self.assertRegex(text, rf"(?m)^#?{key} = ", key)
            self.assertRegex(text, rf"(?m)^# .*\b{key}\b", f"{key} has no comment")

    def test_example_with_everything_uncommented_loads(self) -> None:
        """The commented-out sample values are valid too; only the e-mail keys warn.
        (Not frappe_bench_path: no bench is there; tests/test_frappe_bench.py has one.
        Nor the other ways to name the Redis, which exclude rq_host: tests/test_redis_target.py.
        Nor schedules_file: that file is not there; SchedulesFileTests has one.
        Nor frappe_sites, which needs a bench: tests/test_sites.py.)"""
        text = re.sub(
            r"(?m)^#(?!frappe_bench_path|frappe_sites|rq_url|rq_tls_|rq_sentinel|schedules_file)"
            r"(\w+ = )", r"\1",
                      EXAMPLE.read_text())
        config, warnings = load_config(self.private_copy(EXAMPLE, text))
        self.assertEqual(warnings, [EMAIL_WARNING])
        self.assertEqual(config.rq_password, "change-me-too")
        self.assertEqual(config.metrics_port, 9464)


class RequiredKeyTests(ConfigTestCase):
    def test_minimal_table(self) -> None:
        """The minimal table loads, without warnings."""
        config, warnings = parse_config(minimal())
        self.assertEqual(warnings, [])
        self.assertEqual(config.mysql_port, 3306)
        self.assertEqual(config.tracing_level, "INFO")

    def test_each_missing_required_key_is_named(self) -> None:
        """Dropping any required key reports it by name."""
        for key in REQUIRED:
            self.assertOneProblem(minimal(**{key: None}), f"{key}: required key is missing")

    def test_empty_required_string(self) -> None:
        """An empty required string is refused, except the database password."""
        for key in ["mysql_user", "mysql_host", "mysql_database", "rq_host", "socket_path"]:
            self.assertOneProblem(minimal(**{key: ""}), f"{key}: must not be empty")
        config, _ = parse_config(minimal(mysql_password=""))
        self.assertEqual(config.mysql_password, "")

    def test_optional_strings_kept_as_given(self) -> None:
        """Strings are not stripped: what the file says is what the daemon uses."""
        config, _ = parse_config(minimal(rq_queue_prefix=" bench:", name=""))
        self.assertEqual(config.rq_queue_prefix, " bench:")
        self.assertEqual(config.name, "")


class TypeTests(ConfigTestCase):
    def test_wrong_type_names_key_and_value(self) -> None:
        """A wrong type names the key, the expected type and the value found."""
        self.assertOneProblem(
            minimal(mysql_port="abc"), "mysql_port: expected an integer, got 'abc'"
        )
        self.assertOneProblem(minimal(rq_host=5), "rq_host: expected a string, got 5")
        self.assertOneProblem(
            minimal(startup_without_database_connections="yes"),
            "startup_without_database_connections: expected a boolean (true or false), got 'yes'",
        )
        self.assertOneProblem(
            minimal(scheduler_polling_interval="60"),
            "scheduler_polling_interval: expected a number, got '60'",
        )

    def test_bool_is_not_an_integer(self) -> None:
        """TOML true is refused where an integer or a number is expected."""
        self.assertOneProblem(minimal(rq_port=True), "rq_port: expected an integer, got True")
        self.assertOneProblem(
            minimal(scheduler_polling_interval=True),
            "scheduler_polling_interval: expected a number, got True",
        )

    def test_int_accepted_where_float_expected(self) -> None:
        """An integer is fine for a number of seconds, and fractions are kept."""
        config, _ = parse_config(minimal(webserver_timeout_secs=5, scheduler_polling_interval=0.5))
        self.assertEqual(config.webserver_timeout_secs, 5.0)
        self.assertIsInstance(config.webserver_timeout_secs, float)
        self.assertEqual(config.scheduler_polling_interval, 0.5)

    def test_float_refused_where_integer_expected(self) -> None:
        """A fraction is refused for a whole number of seconds."""
        self.assertOneProblem(
            minimal(full_refresh_internal_secs=1.5),
            "full_refresh_internal_secs: expected an integer, got 1.5",
        )

    def test_non_finite_number(self) -> None:
        """TOML inf and nan are refused as intervals."""
        self.assertOneProblem(
            minimal(scheduler_polling_interval=float("inf")),
            "scheduler_polling_interval: must be a finite number, got inf",
        )


class ValueTests(ConfigTestCase):
    def test_unknown_time_zone(self) -> None:
        """A time zone zoneinfo does not know is refused by name."""
        for zone in ["Mars/Olympus", "", "America", "../etc/passwd"]:
            self.assertOneProblem(
                minimal(time_zone_string=zone),
                f"time_zone_string: unknown time zone {zone!r}",
            )

    def test_zero_and_negative_intervals(self) -> None:
        """Intervals must be greater than zero."""
        for key in [
            "full_refresh_internal_secs",
            "scheduler_polling_interval",
            "webserver_timeout_secs",
            "misfire_grace_secs",
        ]:
            for value in [0, -5]:
                self.assertOneProblem(
                    minimal(**{key: value}), f"{key}: must be greater than 0, got {value}"
                )

    def test_port_ranges(self) -> None:
        """Ports must be 1-65535."""
        for key in ["mysql_port", "rq_port", "webserver_port", "metrics_port"]:
            for value in [0, 65536]:
                self.assertOneProblem(
                    minimal(**{key: value}), f"{key}: must be between 1 and 65535, got {value}"
                )

    def test_negative_rq_database(self) -> None:
        """Redis database numbers start at 0."""
        self.assertOneProblem(minimal(rq_database=-1), "rq_database: must be at least 0, got -1")

    def test_tracing_levels(self) -> None:
        """Known levels in any case are stored upper case; others are refused."""
        for given, stored in [("trace", "TRACE"), ("Warning", "WARNING"), ("ERROR", "ERROR")]:
            config, _ = parse_config(minimal(tracing_level=given))
            self.assertEqual(config.tracing_level, stored)
        self.assertOneProblem(
            minimal(tracing_level="LOUD"),
            "tracing_level: must be one of TRACE, DEBUG, INFO, WARN, WARNING, ERROR, got 'LOUD'",
        )

    def test_webserver_scheme(self) -> None:
        """The scheme is http or https, in any case."""
        config, _ = parse_config(minimal(webserver_scheme="HTTPS"))
        self.assertEqual(config.webserver_scheme, "https")
        self.assertOneProblem(
            minimal(webserver_scheme="ftp"),
            "webserver_scheme: must be one of 'http', 'https', got 'ftp'",
        )

    def test_socket_mode_forms(self) -> None:
        """Mode strings (with or without 0 or 0o) and bare octal-digit integers are octal."""
        forms = [
            ("0660", 0o660),
            ("660", 0o660),
            ("0o600", 0o600),
            ("0", 0),
            ("0777", 0o777),
            (660, 0o660),
            (770, 0o770),
        ]
        for given, mode in forms:
            config, _ = parse_config(minimal(socket_mode=given))
            self.assertEqual(config.socket_mode, mode, given)

    def test_bad_socket_mode(self) -> None:
        """Non-octal or out-of-range modes are refused by name."""
        self.assertOneProblem(
            minimal(socket_mode="rw-rw----"),
            "socket_mode: expected an octal mode such as \"0660\", got 'rw-rw----'",
        )
        self.assertOneProblem(
            minimal(socket_mode=688),
            'socket_mode: expected an octal mode such as "0660", got 688',
        )
        self.assertOneProblem(
            minimal(socket_mode=-660),
            'socket_mode: expected an octal mode such as "0660", got -660',
        )
        self.assertOneProblem(
            minimal(socket_mode="1777"), "socket_mode: must be between 0000 and 0777, got '1777'"
        )
        self.assertOneProblem(
            minimal(socket_mode=True),
            'socket_mode: expected an octal mode string such as "0660", got True',
        )

    def test_prefixed_integer_socket_mode_refused(self) -> None:
        """TOML's 0o660 integer reads as 432, so load_config refuses it rather than guess."""
        text = EXAMPLE.read_text().replace('socket_mode = "0660"', "socket_mode = 0o660")
        error = self.assertRaises(ConfigError, load_config, self.write(text))
        self.assertEqual(len(error.problems), 1)
        self.assertTrue(error.problems[0].startswith("socket_mode: "), error.problems)


class JobBuilderTests(ConfigTestCase):
    def test_frappe_needs_web_server(self) -> None:
        """The default builder needs the web server address and token, named with the reason."""
        problems = self.problems(minimal(job_builder=None))
        self.assertEqual(
            problems,
            [
                "webserver_ip: required when job_builder = 'frappe'",
                "webserver_port: required when job_builder = 'frappe'",
                "webserver_token: required when job_builder = 'frappe'",
            ],
        )

    def test_frappe_refuses_empty_web_server_strings(self) -> None:
        """An empty address or token is as useless as a missing one."""
        data = minimal(job_builder="frappe", webserver_ip="", webserver_port=80, webserver_token="")
        self.assertEqual(
            self.problems(data),
            [
                "webserver_ip: must not be empty when job_builder = 'frappe'",
                "webserver_token: must not be empty when job_builder = 'frappe'",
            ],
        )

    def test_frappe_site_needs_site_name(self) -> None:
        """frappe_site needs frappe_site_name, and not the web server."""
        self.assertOneProblem(
            minimal(job_builder="frappe_site"),
            "frappe_site_name: required when job_builder = 'frappe_site'",
        )
        config, _ = parse_config(minimal(job_builder="frappe_site", frappe_site_name="site1"))
        self.assertEqual(config.frappe_site_name, "site1")

    def test_function_needs_neither(self) -> None:
        """The plain RQ builder needs no web server and no site."""
        config, _ = parse_config(minimal(job_builder="Function"))
        self.assertEqual(config.job_builder, "function")

    def test_frappe_job_id_style(self) -> None:
        """The id style is one of Frappe's, case-insensitive; anything else is named."""
        for style in ("v15", "develop", "uuid"):
            config, _ = parse_config(minimal(frappe_job_id_style=style.upper()))
            self.assertEqual(config.frappe_job_id_style, style)
        self.assertOneProblem(
            minimal(frappe_job_id_style="v16"),
            "frappe_job_id_style: must be one of 'v15', 'develop', 'uuid', got 'v16'",
        )

    def test_job_ttls(self) -> None:
        """result_ttl and failure_ttl take rq's meanings: 0 drops at once, -1 keeps for ever."""
        config, _ = parse_config(minimal(result_ttl=0, failure_ttl=-1))
        self.assertEqual((config.result_ttl, config.failure_ttl), (0, -1))
        config, _ = parse_config(minimal(result_ttl=86400, failure_ttl=3600))
        self.assertEqual((config.result_ttl, config.failure_ttl), (86400, 3600))
        self.assertEqual(
            self.problems(minimal(result_ttl=-2, failure_ttl="7d")),
            [
                "result_ttl: must be at least -1, got -2",
                "failure_ttl: expected an integer, got '7d'",
            ],
        )

    def test_unknown_builder(self) -> None:
        """An unknown builder is refused, with no follow-on requirement noise."""
        self.assertOneProblem(
            minimal(job_builder="celery"),
            "job_builder: must be one of 'frappe', 'frappe_site', 'function', got 'celery'",
        )


class ReportingTests(ConfigTestCase):
    def test_all_problems_reported_at_once(self) -> None:
        """Every problem in the file is reported together, in field order."""
        data = minimal(
            full_refresh_internal_secs=0,
            time_zone_string="Nowhere/Land",
            tracing_level="LOUD",
            mysql_port="abc",
            rq_port=None,
            socket_mode="999",
        )
        problems = self.problems(data)
        self.assertEqual(
            [problem.split(":")[0] for problem in problems],
            [
                "full_refresh_internal_secs",
                "time_zone_string",
                "tracing_level",
                "mysql_port",
                "rq_port",
                "socket_mode",
            ],
        )

    def test_error_string_joins_problems(self) -> None:
        """str(ConfigError) is the problems, one a line, and it remembers its source."""
        error = self.assertRaises(
            ConfigError, parse_config, minimal(rq_port=None, rq_host=None), "my.toml"
        )
        self.assertEqual(
            str(error), "rq_host: required key is missing\nrq_port: required key is missing"
        )
        self.assertEqual(error.source, "my.toml")

    def test_unknown_keys_warn(self) -> None:
        """Unknown keys are never fatal: one warning each, with a hint for a likely typo."""
        config, warnings = parse_config(minimal(mysql_pasword="x", colour="blue"))
        self.assertEqual(
            warnings,
            [
                "unknown key 'mysql_pasword' ignored (did you mean 'mysql_password'?)",
                "unknown key 'colour' ignored",
            ],
        )
        self.assertEqual(config.mysql_password, "p")

    def test_email_keys_one_warning(self) -> None:
        """Only the e-mail keys present are listed, in one warning."""
        _, warnings = parse_config(minimal(email_on_level="INFO", email_host_port=25))
        self.assertEqual(
            warnings, ["email_on_level, email_host_port: ignored: btu_twisted does not send e-mail"]
        )

    def test_unreadable_file(self) -> None:
        """A missing file or a directory is reported with its path."""
        missing = os.path.join(self.mktemp(), "nope.toml")
        error = self.assertRaises(ConfigError, load_config, missing)
        self.assertEqual(len(error.problems), 1)
        self.assertIn(missing, error.problems[0])
        self.assertIn("No such file", error.problems[0])
        directory = self.mktemp()
        os.mkdir(directory)
        error = self.assertRaises(ConfigError, load_config, directory)
        self.assertIn(directory, str(error))

    def test_toml_syntax_error_has_line(self) -> None:
        """A TOML syntax error names the file and the line."""
        path = self.write('name = "x"\nrq_port = \nrq_host = "h"\n')
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(len(error.problems), 1)
        self.assertIn(path, error.problems[0])
        self.assertIn("line 2", error.problems[0])

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is reported, not a traceback."""
        path = self.mktemp()
        Path(path).write_bytes(b'name = "\xff"\n')
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("not UTF-8", str(error))

    def test_load_reports_validation_problems(self) -> None:
        """load_config reports the same problems as parse_config, with the file as source."""
        path = self.write('rq_port = "x"\n')
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("rq_port: expected an integer, got 'x'", error.problems)
        self.assertIn("socket_path: required key is missing", error.problems)
        self.assertEqual(error.source, path)


class SecretTests(ConfigTestCase):
    def test_masked_hides_secrets(self) -> None:
        """masked() lists every field, with the three secrets replaced."""
        data = minimal(job_builder="frappe", webserver_ip="h", webserver_port=80, **SECRETS)
        config, _ = parse_config(data)
        shown = masked(config)
        self.assertEqual(set(shown), {spec.name for spec in toml_fields()})
        for key in SECRETS:
            self.assertEqual(shown[key], "********")
        self.assertEqual(shown["mysql_user"], "u")
        self.assertEqual(shown["socket_mode"], "0660")

    def test_masked_leaves_unset_secret_none(self) -> None:
        """An unset secret stays None so 'no password' can be told from 'password set'."""
        self.assertIsNone(masked(parse_config(minimal())[0])["rq_password"])

    def test_masked_shows_what_rq_url_sets(self) -> None:
        """A database, user or password inside rq_url is what the daemon uses, so
        print-config shows it under its key (the password masked), not the default."""
        config, _ = parse_config(minimal(rq_host=None, rq_port=None,
                                         rq_url="redis://btu:pw@redis.example:6380/7"))
        shown = masked(config)
        self.assertEqual((shown["rq_database"], shown["rq_username"], shown["rq_password"]),
                         (7, "btu", "********"))
        self.assertNotIn("pw", repr(shown))
        plain, _ = parse_config(minimal(rq_host=None, rq_port=None,
                                        rq_url="redis://redis.example:6380", rq_database=3))
        self.assertEqual((masked(plain)["rq_database"], masked(plain)["rq_password"]), (3, None))

    def test_repr_hides_secrets(self) -> None:
        """repr(Config) (what a careless log line shows) never holds a secret."""
        config, _ = parse_config(minimal(**SECRETS))
        text = repr(config)
        for secret in SECRETS.values():
            self.assertNotIn(secret, text)
        self.assertIn("mysql_password='********'", text)
        self.assertIn("mysql_user='u'", text)

    def test_secrets_not_in_errors_or_warnings(self) -> None:
        """A badly typed secret is reported without its value; warnings never hold values."""
        secret_number = 987654321
        data = minimal(
            mysql_password=secret_number,
            rq_password=[secret_number],
            webserver_token={"t": secret_number},
            email_account_password="mail-secret",
            mysql_pasword="typo-secret",
        )
        error = self.assertRaises(ConfigError, parse_config, data)
        self.assertEqual(len(error.problems), 3)
        self.assertNotIn(str(secret_number), str(error))
        self.assertIn(
            "mysql_password: expected a string, "
            "got a value of type int (not shown: it is a secret)",
            error.problems,
        )
        _, warnings = parse_config(
            minimal(email_account_password="mail-secret", mysql_pasword="typo-secret")
        )
        self.assertNotIn("secret", " ".join(warnings))

    def test_config_is_frozen(self) -> None:
        """A loaded Config cannot be changed behind the services' backs."""
        config, _ = parse_config(minimal())
        self.assertRaises(FrozenInstanceError, setattr, config, "rq_port", 1)


class PermissionTests(ConfigTestCase):
    def test_world_readable_warns(self) -> None:
        """A 0644 file warns that it holds passwords, and load_config passes that on."""
        path = self.write(EXAMPLE.read_text(), 0o644)
        expected = (
            f"config file {path} is readable by other users (mode 0644); it holds passwords"
        )
        self.assertEqual(permission_warning(path), expected)
        self.assertEqual(load_config(path)[1], [expected])

    def test_world_writable_warns(self) -> None:
        """A file other users can write also warns."""
        path = self.write("", 0o602)
        self.assertEqual(
            permission_warning(path),
            f"config file {path} is writable by other users (mode 0602); it holds passwords",
        )

    def test_private_file_does_not_warn(self) -> None:
        """0600 and 0640 files do not warn."""
        for mode in [0o600, 0o640]:
            self.assertIsNone(permission_warning(self.write("", mode)))

    def test_readable_without_secrets_does_not_warn(self) -> None:
        """A config holding no password or token (a schedules file and a local Redis) may
        be world-readable: no "holds passwords" warning on every start and call."""
        text = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}"
                          for k, v in minimal().items() if not k.startswith("mysql_"))
        schedules = self.write("", 0o644)
        path = self.write(text.replace("'", '"') + f'\nschedules_file = "{schedules}"\n', 0o644)
        self.assertEqual(load_config(path)[1], [])
        self.assertIsNone(permission_warning(path, holds_secrets=False))
        self.assertIn("holds passwords", permission_warning(path) or "")

    def test_writable_without_secrets_still_warns(self) -> None:
        path = self.write("", 0o646)
        self.assertIn("writable by other users",
                      permission_warning(path, holds_secrets=False) or "")

    def test_world_writable_socket_mode_warns(self) -> None:
        _, warnings = parse_config(minimal(socket_mode="0777"))
        self.assertEqual(warnings, ["socket_mode: 0777 lets every local user plan, cancel and "
                                    "reload schedules; use 0660 with socket_file_group_owner"])
        self.assertEqual(parse_config(minimal(socket_mode="0660"))[1], [])

    def test_missing_file_does_not_warn(self) -> None:
        """A file that cannot be stated gives no permission warning (reading it fails anyway)."""
        self.assertIsNone(permission_warning(os.path.join(self.mktemp(), "nope")))


class LogLevelTests(ConfigTestCase):
    def test_mapping(self) -> None:
        """Each tracing_level maps to the twisted.logger level that shows the same events."""
        for given, level in [
            ("TRACE", LogLevel.debug),
            ("DEBUG", LogLevel.debug),
            ("info", LogLevel.info),
            ("WARN", LogLevel.warn),
            ("WARNING", LogLevel.warn),
            ("ERROR", LogLevel.error),
        ]:
            config, _ = parse_config(minimal(tracing_level=given))
            self.assertIs(log_level(config), level, given)


MARIADB_KEYS = ("mysql_user", "mysql_password", "mysql_host", "mysql_database")


class SchedulesFileTests(ConfigTestCase):
    """schedules_file: with it the mysql_* keys may all be left out."""

    def file_only(self, **changes: Any) -> dict[str, Any]:
        """The minimal table with a schedules file and no MariaDB key at all."""
        path = self.write("")
        return minimal(schedules_file=path, **{**{key: None for key in MARIADB_KEYS}, **changes})

    def test_no_mysql_keys_needed(self) -> None:
        """A schedules file and no mysql_* key loads, and says it uses no MariaDB."""
        config, warnings = parse_config(self.file_only())
        self.assertEqual(warnings, [])
        self.assertFalse(config.uses_mariadb)
        self.assertIsNone(config.mysql_database)

    def test_both_sources(self) -> None:
        """A schedules file together with every mysql_* key uses both."""
        config, _ = parse_config(minimal(schedules_file=self.write("")))
        self.assertTrue(config.uses_mariadb)
        self.assertIsNotNone(config.schedules_file)

    def test_partial_mysql_keys_refused(self) -> None:
        """Some mysql_* keys but not all is a mistake, named key by key."""
        problems = self.problems(self.file_only(mysql_user="u"))
        self.assertEqual([p.split(":")[0] for p in problems],
                         ["mysql_password", "mysql_host", "mysql_database"])
        self.assertIn("schedules_file", problems[0])

    def test_builder_keys_not_needed_without_mariadb(self) -> None:
        """job_builder 'frappe' (the default) needs no web server when no MariaDB is used."""
        config, _ = parse_config(self.file_only(job_builder=None))
        self.assertEqual(config.job_builder, "frappe")

    def test_unreadable_file(self) -> None:
        """A schedules_file that cannot be read is named at once."""
        self.assertOneProblem(
            minimal(schedules_file="/nonexistent/schedules.toml"),
            "schedules_file: cannot read /nonexistent/schedules.toml",
        )

    def test_without_either_source(self) -> None:
        """Neither schedules_file nor mysql_* keys: the mysql_* keys are required."""
        problems = self.problems(minimal(**{key: None for key in MARIADB_KEYS}))
        self.assertEqual(problems, [f"{key}: required key is missing" for key in MARIADB_KEYS])
