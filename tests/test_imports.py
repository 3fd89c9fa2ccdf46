"""What a command or a config loads: nothing it does not use.

Each check runs in a fresh interpreter and reads ``sys.modules`` afterwards,
so it sees exactly what that run imported.  ``btu ping`` and ``btu next-runs``
must not load the daemon's machinery (Twisted's reactor, txredisapi), the
clients of commands that were not asked for (redis-py, PyMySQL) or the TLS
and HTTP stacks: those imports were most of their start-up time.  The daemon
must not load the HTTP client (treq) for a builder that makes no HTTP call,
nor prometheus_client and twisted.web without ``metrics_port``, nor
pyOpenSSL and service_identity when no builder makes an HTTPS call
(:mod:`btu_twisted.daemon.tls`), nor cryptography's OpenSSL bindings, which PyMySQL
wants only for RSA password logins that MariaDB never asks for.  (The
``cryptography`` package itself is loaded, by redis-py, without its bindings.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.trial import unittest

from btu_twisted.config import parse_config
from btu_twisted.daemon.tls import uses_tls
from tests.integration.support import config_values, write_config

ROOT = Path(__file__).resolve().parent.parent

#: Never loaded by the CLI's light commands.
CLI_HEAVY = ("twisted", "txredisapi", "pymysql", "redis", "rq", "treq", "OpenSSL",
             "cryptography", "service_identity", "prometheus_client")

#: Never loaded by a daemon whose config uses neither the frappe builder nor metrics.
DAEMON_UNUSED = ("treq", "prometheus_client", "twisted.web", "btu_twisted.jobs.frappe_http",
                 "btu_twisted.ops.metrics", "hyperlink", "OpenSSL", "service_identity",
                 "twisted.internet.ssl", "twisted.protocols.tls", "cryptography.hazmat")


def loaded_after(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` in a new interpreter; its ``sys.modules`` (and its ``result``) afterwards."""
    program = (
        "import json, sys\n"
        "result = None\n"
        f"{code}\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'result': result}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", program, *args], cwd=str(ROOT), env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"the child failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def present(modules: list[str], names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` loaded, as packages or any of their submodules."""
    return sorted({name for name in names for module in modules
                   if module == name or module.startswith(name + ".")})


class _WithConfig(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="btu-imports-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def config(self, **overrides: Any) -> str:
        path = self.dir / f"btu-{len(list(self.dir.iterdir()))}.toml"
        write_config(path, config_values("btu_imports_never_connected",
                                         socket_path=str(self.dir / "none.sock"), **overrides))
        return str(path)


CLI = (
    "import io\n"
    "from btu_twisted.cli import main\n"
    "out, err = io.StringIO(), io.StringIO()\n"
    "result = [main(sys.argv[1:], out, err), out.getvalue(), err.getvalue()]\n"
)


class CliImportTests(_WithConfig):
    def test_ping_loads_no_client_and_no_twisted(self) -> None:
        """``btu ping`` (here refused: no daemon) reads the config and talks to a
        socket; it loads none of the heavy packages."""
        child = loaded_after(CLI, "ping", "--config", self.config())
        code, _, err = child["result"]
        self.assertEqual(code, 3, err)  # it ran: the socket is not there
        self.assertIn("cannot reach the btu daemon", err)
        self.assertEqual(present(child["modules"], CLI_HEAVY), [])

    def test_next_runs_loads_croniter_only(self) -> None:
        """``btu next-runs`` needs the cron code (croniter) and nothing heavier."""
        child = loaded_after(CLI, "next-runs", "0 13 * * 1-5", "-n", "2", "--tz", "UTC")
        code, out, err = child["result"]
        self.assertEqual(code, 0, err)
        self.assertIn("(UTC)", out)
        self.assertIn("croniter", child["modules"])
        self.assertEqual(present(child["modules"], CLI_HEAVY), [])

    def test_next_runs_with_a_config_loads_pymysql_without_its_rsa_bindings(self) -> None:
        """With a MariaDB config ``next-runs`` reads the site's zone through
        PyMySQL, loaded without cryptography's OpenSSL bindings (a sixth of the
        command's time; MariaDB never asks for an RSA login).  Here the database
        does not exist: a warning, and the listing in the config's zone."""
        child = loaded_after(CLI, "next-runs", "0 13 * * 1-5", "-n", "2",
                             "--config", self.config())
        code, out, err = child["result"]
        self.assertEqual(code, 0, err)
        self.assertIn("cannot read cron_time_zone", err)
        self.assertIn("pymysql", child["modules"])
        self.assertEqual(present(child["modules"], ("cryptography.hazmat", "twisted", "rq")), [])

    def test_a_client_command_still_reports_its_client_error(self) -> None:
        """``list-jobs`` loads redis-py itself, and its connection error still maps
        to exit 3 and one line (the error classes are found once loaded)."""
        child = loaded_after(CLI, "list-jobs", "--config", self.config(rq_port=1))
        code, _, err = child["result"]
        self.assertEqual(code, 3, err)
        self.assertIn("cannot reach Redis at", err)
        self.assertIn("redis", child["modules"])
        self.assertEqual(present(child["modules"], ("pymysql", "txredisapi", "treq")), [])


MAKE_SERVICE = (
    "from btu_twisted import tap\n"
    "options = tap.Options()\n"
    "options.parseOptions(['--config', sys.argv[1]])\n"
    "service = tap.makeService(options)\n"
    "result = [type(service.builder).__name__, service.metrics_service is not None]\n"
)


class DaemonImportTests(_WithConfig):
    def test_function_builder_without_metrics(self) -> None:
        """A ``function`` builder without ``metrics_port`` loads no HTTP client,
        no prometheus_client, no twisted.web and no TLS."""
        child = loaded_after(MAKE_SERVICE, self.config(job_builder="function"))
        self.assertEqual(child["result"], ["FunctionBuilder", False])
        self.assertIn("btu_twisted.daemon.service", child["modules"])
        self.assertEqual(present(child["modules"], DAEMON_UNUSED), [])

    def test_rq_is_not_loaded_to_start(self) -> None:
        """rq and redis-py (a third to a half of exec to first ``pong``) are
        loaded by the timer once the daemon has started, not to build it."""
        for builder in ({"job_builder": "function"},
                        {"job_builder": "frappe_site", "frappe_site_name": "site1.local"}):
            child = loaded_after(MAKE_SERVICE, self.config(**builder))
            self.assertIn("btu_twisted.timing.timer", child["modules"])
            self.assertEqual(present(child["modules"], ("rq", "redis")), [], builder)

    def test_metrics_without_tls(self) -> None:
        """metrics_port brings prometheus_client and twisted.web, still without TLS."""
        child = loaded_after(MAKE_SERVICE, self.config(job_builder="function", metrics_port=9464))
        self.assertEqual(child["result"], ["FunctionBuilder", True])
        self.assertEqual(present(child["modules"], DAEMON_UNUSED),
                         ["btu_twisted.ops.metrics", "hyperlink", "prometheus_client", "twisted.web"])

    def test_tls_can_still_be_loaded_afterwards(self) -> None:
        """Built without TLS, the process can still import pyOpenSSL and the real
        twisted.internet.ssl; only txredisapi holds the stand-ins, which refuse use."""
        child = loaded_after(MAKE_SERVICE + (
            "import txredisapi\n"
            "stand_in = txredisapi.ssl\n"
            "from twisted.internet import ssl\n"
            "try:\n"
            "    stand_in.ClientContextFactory()\n"
            "except RuntimeError as error:\n"
            "    refused = str(error)\n"
            "result = [ssl.__name__, ssl is stand_in, hasattr(ssl, 'optionsForClientTLS'), refused]\n"
        ), self.config(job_builder="function"))
        name, same, real, refused = child["result"]
        self.assertEqual((name, same, real), ("twisted.internet.ssl", False, True))
        self.assertIn("TLS is not loaded", refused)
        self.assertIn("OpenSSL", child["modules"])

    def test_frappe_site_builder_loads_no_http_client(self) -> None:
        child = loaded_after(MAKE_SERVICE, self.config(job_builder="frappe_site",
                                                       frappe_site_name="site1.local"))
        self.assertEqual(child["result"], ["FrappeSiteBuilder", False])
        self.assertEqual(present(child["modules"], DAEMON_UNUSED), [])

    def test_what_a_config_uses_is_loaded(self) -> None:
        """The frappe builder brings its HTTP client and TLS, metrics_port the exporter."""
        child = loaded_after(MAKE_SERVICE, self.config(
            job_builder="frappe", webserver_ip="127.0.0.1", webserver_port=8000,
            webserver_token="token a:b", metrics_port=9464,
        ))
        self.assertEqual(child["result"], ["FrappeBuilder", True])
        self.assertEqual(
            present(child["modules"], ("treq", "prometheus_client", "twisted.web", "OpenSSL",
                                       "service_identity")),
            ["OpenSSL", "prometheus_client", "service_identity", "treq", "twisted.web"],
        )


class LoopbackTests(unittest.TestCase):
    def test_no_tls_context_for_a_database_on_loopback(self) -> None:
        """PyMySQL would build an SSL context with the system's CA certificates
        (25-30 ms) to try TLS it does not verify; the CLI skips it on loopback
        only, where TLS protects nothing."""
        from btu_twisted.cli.common import _is_loopback

        for host in (None, "", "localhost", "127.0.0.1", "127.0.1.1", "::1"):
            self.assertTrue(_is_loopback(host), host)
        for host in ("db.example.com", "10.0.0.5", "::ffff:10.0.0.5", "localhost.example"):
            self.assertFalse(_is_loopback(host), host)


class UsesTlsTests(unittest.TestCase):
    def test_which_configs_keep_tls(self) -> None:
        """The frappe builder keeps TLS; the others do not, unless a Redis URL
        or a TLS setting (keys that may come later) asks for it."""
        def config(**overrides: Any) -> Any:
            return parse_config(config_values("x", **overrides))[0]

        self.assertFalse(uses_tls(config(job_builder="function", metrics_port=9464)))
        self.assertFalse(uses_tls(config(job_builder="frappe_site", frappe_site_name="s")))
        self.assertTrue(uses_tls(config(job_builder="frappe", webserver_ip="127.0.0.1",
                                        webserver_port=8000, webserver_token="token a:b")))
        later = {"job_builder": "function", "rq_url": None, "rq_tls_ca_file": None}
        self.assertFalse(uses_tls(SimpleNamespace(**later)))
        self.assertTrue(uses_tls(SimpleNamespace(**{**later, "rq_url": "rediss://r:6380/0"})))
        self.assertTrue(uses_tls(SimpleNamespace(**{**later, "rq_tls_ca_file": "/ca.pem"})))
