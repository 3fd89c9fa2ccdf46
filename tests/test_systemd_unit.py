"""The shipped systemd unit: it verifies, and it runs what an admin expects."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial import unittest

UNIT = Path(__file__).resolve().parent.parent / "etc" / "systemd" / "btu_scheduler.service"


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
