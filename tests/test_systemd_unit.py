"""The shipped systemd unit and supervisor program: they verify, and run what an admin expects."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest

from tests.integration.support import config_values, write_config

ETC = Path(__file__).resolve().parent.parent / "etc"
UNIT = ETC / "systemd" / "btu_scheduler.service"
SUPERVISOR = ETC / "supervisor" / "btu_scheduler.conf"


class SystemdUnitTests(unittest.TestCase):
    def test_runs_twistd_in_the_foreground_without_private_tmp(self) -> None:
        """ExecStart is ``twistd -n --pidfile= btu``, restarts on failure, runs as
        a dedicated user, and PrivateTmp (which would hide a /tmp socket) is off."""
        text = UNIT.read_text()
        exec_start = [line for line in text.splitlines() if line.startswith("ExecStart=")]
        self.assertEqual(len(exec_start), 1)
        self.assertIn("twistd -n --pidfile= btu --config=", exec_start[0])
        self.assertIn("Restart=on-failure", text)
        self.assertIn("User=btu_scheduler", text)
        self.assertIn("NoNewPrivileges=yes", text)
        self.assertNotIn("\nPrivateTmp=yes", text)

    def test_systemd_analyze_verify(self) -> None:
        """``systemd-analyze verify`` accepts the unit (with ExecStart pointed at
        this venv's twistd, since /opt/btu_twisted does not exist here)."""
        tool = shutil.which("systemd-analyze")
        if tool is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        twistd = Path(sys.executable).parent / "twistd"
        if not twistd.exists():
            raise unittest.SkipTest(f"no twistd beside {sys.executable}")
        with tempfile.TemporaryDirectory() as tmp:
            unit = Path(tmp) / UNIT.name
            unit.write_text(UNIT.read_text().replace("/opt/btu_twisted/bin/twistd", str(twistd)))
            result = subprocess.run(
                [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60
            )
        problems = [
            line for line in (result.stdout + result.stderr).splitlines()
            if UNIT.name in line and "Documentation" not in line
        ]
        self.assertEqual(problems, [])
        self.assertEqual(result.returncode, 0, result.stderr)


def _unit_settings(text: str) -> dict[str, str]:
    """``Key=value`` lines of a unit (the last one wins, as in systemd); comments skipped."""
    settings: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def _twistd_accepts(case: unittest.TestCase, argv: list[str]) -> Any:
    """Parse ``argv`` (without the program) with twistd's own options, the btu plugin included.

    The config path is swapped for a real file so the plugin's option check runs.
    """
    config = Path(case.mktemp())
    config.parent.mkdir(parents=True, exist_ok=True)
    write_config(config, config_values("btu_unit_check"))
    swapped = [f"--config={config}" if arg.startswith("--config=") else arg for arg in argv]
    options = ServerOptions()
    options.parseOptions(swapped)
    return options


class SystemdSettingsTests(unittest.TestCase):
    """The settings a bench needs (issue 9 part 8), and twistd accepting ExecStart."""

    def test_socket_reachable_by_the_bench_group_only(self) -> None:
        """The runtime directory is traversable, the daemon is in the web workers' group,
        /home is readable for bench mode, and the old 0750 directory is gone."""
        settings = _unit_settings(UNIT.read_text())
        self.assertEqual(settings["RuntimeDirectory"], "btu_scheduler")
        self.assertEqual(settings["RuntimeDirectoryMode"], "0755")
        self.assertEqual(settings["SupplementaryGroups"], "frappe")
        self.assertEqual(settings["ProtectSystem"], "strict")
        self.assertEqual(settings["ProtectHome"], "read-only")
        self.assertNotIn("PrivateTmp", settings)

    def test_the_example_config_matches_the_unit(self) -> None:
        """The shipped TOML puts a 0660 socket, group frappe, in the unit's runtime directory."""
        text = (UNIT.parent.parent / "btu_scheduler.toml").read_text()
        self.assertIn('socket_path = "/run/btu_scheduler/btu_scheduler.sock"', text)
        self.assertIn('socket_file_group_owner = "frappe"', text)
        self.assertIn('socket_mode = "0660"', text)

    def test_exec_start_is_accepted_by_twistd(self) -> None:
        """twistd parses ExecStart's arguments: foreground, no pid file, the btu plugin."""
        argv = shlex.split(_unit_settings(UNIT.read_text())["ExecStart"])
        self.assertTrue(argv[0].endswith("/twistd"), argv)
        options = _twistd_accepts(self, argv[1:])
        self.assertEqual((options["nodaemon"], options["pidfile"], options.subCommand),
                         (True, "", "btu"))


class SupervisorConfTests(unittest.TestCase):
    """etc/supervisor/btu_scheduler.conf for benches run by `bench setup production`."""

    def program(self) -> configparser.SectionProxy:
        parser = configparser.RawConfigParser()
        self.assertEqual(parser.read(SUPERVISOR), [str(SUPERVISOR)])
        self.assertEqual(parser.sections(), ["program:btu_scheduler"])
        return parser["program:btu_scheduler"]

    def test_command_is_accepted_by_twistd(self) -> None:
        """The command runs twistd in the foreground, without a pid file, with the btu plugin."""
        argv = shlex.split(self.program()["command"])
        self.assertTrue(argv[0].endswith("/twistd"), argv)
        self.assertEqual(argv[1:4], ["-n", "--pidfile=", "btu"])
        options = _twistd_accepts(self, argv[1:])
        self.assertEqual((options["nodaemon"], options["pidfile"], options.subCommand),
                         (True, "", "btu"))
        self.assertEqual(options.subOptions.config.mysql_database, "btu_unit_check")

    def test_program_settings(self) -> None:
        """Bench user, restarts, a clean TERM stop with time to finish, logs in the bench."""
        program = self.program()
        self.assertEqual(program["user"], "frappe")
        self.assertEqual((program["autostart"], program["autorestart"]), ("true", "true"))
        self.assertEqual(program["stopsignal"], "TERM")
        self.assertGreaterEqual(int(program["stopwaitsecs"]), 10)
        self.assertIn('PYTHONUNBUFFERED="1"', program["environment"])
        for key in ("stdout_logfile", "stderr_logfile"):
            self.assertTrue(program[key].startswith("/home/frappe/frappe-bench/logs/"), key)
        # supervisor cuts a value at " ;": no value may hold a semicolon.
        self.assertEqual([k for k, v in program.items() if ";" in v], [])
