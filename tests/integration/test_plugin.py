"""``twistd -n btu`` as an admin runs it: a subprocess that starts, answers
the BTU app's ping on its socket, and removes the socket on SIGTERM; a bad
config is one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.integration.daemon import ROOT, wait_for
from tests.integration.support import TWISTD, TestDatabase, config_values, write_config

DB = 4


def btu_client(path: str, request: bytes) -> bytes:
    """Exactly what the BTU app does: one send, no newline, 0.5 s, one recv."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.send(request)
        time.sleep(0.5)
        return s.recv(2048)


class PluginTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="btu-plugin-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def run_twistd(self, config: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        return subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "btu", "--config", str(config)],
            cwd=str(self.dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    async def test_starts_answers_ping_and_cleans_up(self) -> None:
        """The daemon answers the BTU client's newline-less ping with pong and
        removes its socket when systemd stops it with SIGTERM."""
        db = TestDatabase()
        self.addCleanup(db.drop)
        values = config_values(db.name, redis_db=DB, socket_path=str(self.dir / "btu.sock"))
        config = self.dir / "btu.toml"
        write_config(config, values)
        proc = self.run_twistd(config)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        sock = str(self.dir / "btu.sock")
        await wait_for(lambda: os.path.exists(sock) or proc.poll() is not None, timeout=30)
        if proc.poll() is not None:
            self.fail(f"twistd exited: {proc.communicate()[1].decode()[-2000:]}")
        reply = await deferToThread(
            btu_client, sock, b'{"request_type": "ping", "request_content": null}'
        )
        self.assertEqual(reply, b"pong\n")
        self.assertEqual(os.stat(sock).st_mode & 0o777, 0o660)
        proc.send_signal(signal.SIGTERM)
        out, err = await deferToThread(proc.communicate, timeout=30)
        # twistd re-raises SIGTERM on the way out; systemd counts that as a clean stop.
        self.assertIn(proc.returncode, (0, -signal.SIGTERM), err.decode()[-2000:])
        self.assertFalse(os.path.exists(sock))
        self.assertIn(b"btu_twisted", out)

    async def test_bad_config_is_one_line_and_nonzero(self) -> None:
        """A config with a wrong value exits non-zero with one line naming the
        key on stderr, no traceback."""
        config = self.dir / "bad.toml"
        write_config(config, config_values("x", mysql_port="abc"))
        proc = self.run_twistd(config)
        out, err = await deferToThread(proc.communicate, timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        lines = err.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, err.decode())
        self.assertIn("mysql_port", lines[0])
        self.assertNotIn("Traceback", err.decode())

    async def test_unreachable_database_exits_nonzero(self) -> None:
        """An unreachable MariaDB at start-up is one clear line and exit 1."""
        values = config_values("nope", redis_db=DB, mysql_port=1,
                               socket_path=str(self.dir / "x.sock"))
        config = self.dir / "down.toml"
        write_config(config, values)
        proc = self.run_twistd(config)
        out, err = await deferToThread(proc.communicate, timeout=60)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("cannot use MariaDB", err.decode())
        self.assertNotIn("Traceback", err.decode())
        self.assertFalse(os.path.exists(self.dir / "x.sock"))


del reactor


class InstalledPluginTests(unittest.TestCase):
    def test_installed_twistd_lists_btu(self) -> None:
        """The plugin ships with a plain ``pip install .``: this venv's twistd,
        run outside the checkout, lists ``btu`` and the ``btu`` script runs."""
        bin_dir = Path(sys.executable).parent
        if not (bin_dir / "twistd").exists():
            raise unittest.SkipTest(f"no twistd beside {sys.executable}")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        listed = subprocess.run(
            [str(bin_dir / "twistd"), "--help"], cwd="/", env=env,
            capture_output=True, text=True, timeout=60,
        )
        self.assertIn("btu", [line.split()[0] for line in listed.stdout.splitlines()
                              if line.startswith("    ") and line.split()])
        version = subprocess.run(
            [str(bin_dir / "btu"), "--version"], cwd="/", env=env,
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(version.returncode, 0, version.stderr)
        self.assertIn("0.1.0", version.stdout + version.stderr)


class MakeServiceTests(unittest.TestCase):
    def test_unusable_ca_file_is_a_config_error(self) -> None:
        """A webserver_ca_file without a certificate ends makeService with one
        'bad config' line (SystemExit), not a traceback."""
        from btu_twisted import tap

        directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="btu-tap-"))
        self.addCleanup(shutil.rmtree, directory, True)
        (directory / "ca.pem").write_text("not a certificate\n")
        config = directory / "btu.toml"
        write_config(config, config_values(
            "x", job_builder="frappe", webserver_ip="127.0.0.1", webserver_port=8000,
            webserver_token="token a:b", webserver_ca_file=str(directory / "ca.pem"),
        ))
        options = tap.Options()
        options.parseOptions(["--config", str(config)])
        with self.assertRaises(SystemExit) as raised:
            tap.makeService(options)
        self.assertIn("bad config", str(raised.exception))
        self.assertIn("ca.pem", str(raised.exception))
