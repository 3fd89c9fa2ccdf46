"""Throw-away Redis servers of every kind a bench uses, each on free ports, stopped after.

A plain port is always opened beside the TLS port or the unix socket: the test
administers the server (ACL SETUSER, INFO) and checks readiness through it, so
only the daemon's own connection goes through the kind under test.  Nothing is
persisted; every server lives in a temporary directory removed by its cleanup.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import redis
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return bool(s.recv(64))
    except OSError:
        return False


class RedisServer:
    """``redis-server`` (or ``--sentinel``) with ``args``; ``port`` is its plain port."""

    def __init__(self, directory: Path, name: str, args: list[str], sentinel: str = "") -> None:
        self.directory = directory
        self.name = name
        self.args = args
        self.sentinel = sentinel  # the config file's text, for a Sentinel
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> RedisServer:
        server = shutil.which("redis-server")
        if server is None:
            raise unittest.SkipTest("no redis-server on PATH")
        for _ in range(5):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            common = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                      str(self.directory), "--logfile", str(self.directory / f"{self.name}.log")]
            if self.sentinel:
                conf = self.directory / f"{self.name}.conf"
                conf.write_text(self.sentinel)
                argv = [server, str(conf), "--sentinel", *common]
            else:
                argv = [server, *common, "--save", "", "--appendonly", "no",
                        "--dbfilename", f"{self.name}.rdb", *self.args]
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, cwd=str(self.directory))
            for _ in range(200):
                if self.proc.poll() is not None:
                    break
                if _answers(self.port):
                    return self
                await deferLater(reactor, 0.05, lambda: None)
            await self.stop()
        raise AssertionError(f"could not start redis-server {self.name}: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.directory / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self, **options: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **options)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            await deferToThread(proc.wait, 10)


def server_directory(case: unittest.TestCase) -> Path:
    # Short: a unix socket path must fit in 108 bytes.
    directory = Path(tempfile.mkdtemp(dir="/tmp", prefix="btu-rk-"))
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


async def start_server(case: unittest.TestCase, directory: Path, name: str,
                       *args: str, sentinel: str = "") -> RedisServer:
    server = await RedisServer(directory, name, list(args), sentinel).start()
    case.addCleanup(server.stop)
    return server


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client one, all signed by it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise unittest.SkipTest("no openssl on PATH")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=btu test CA")
    for name, extension in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                            ("client", "extendedKeyUsage=clientAuth")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=btu test {name}")
        (directory / f"{name}.ext").write_text(extension + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {name: directory / name for name in
            ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}
