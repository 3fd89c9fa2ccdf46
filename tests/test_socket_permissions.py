"""Who can connect to the daemon's socket as the shipped unit lays it out (issue 9 part 8).

The daemon's own ControlSocketService creates the socket (mode and group from
the shipped example TOML) inside a directory with the unit's
RuntimeDirectoryMode, standing in for /run/btu_scheduler.  Clients are real
processes started as throw-away users: one in the socket's group, as the
Frappe web workers are, and one not.  Needs root (to start them as others).
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from btu_twisted.daemon.control_socket import ControlSocketService

ETC = Path(__file__).resolve().parent.parent / "etc"
UNIT = ETC / "systemd" / "btu_scheduler.service"
EXAMPLE = ETC / "btu_scheduler.toml"

# uids/gids no account uses here; the kernel needs no passwd entry for them.
MEMBER_UID, STRANGER_UID, OWN_GID = 64917, 64918, 64919

# Run by /usr/bin/python3 as the throw-away user: prints "ok", "denied" or the error.
_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
    print("ok")
except PermissionError:
    print("denied")
except OSError as e:
    print(type(e).__name__, e)
"""


def _runtime_directory_mode() -> int:
    for line in UNIT.read_text().splitlines():
        if line.startswith("RuntimeDirectoryMode="):
            return int(line.partition("=")[2], 8)
    raise AssertionError("the unit sets no RuntimeDirectoryMode")


class SocketPermissionTests(unittest.TestCase):
    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("starting clients as other users needs root")
        self.python = "/usr/bin/python3"
        if not os.access(self.python, os.X_OK):
            raise unittest.SkipTest("no /usr/bin/python3 that any user may run")
        # Any existing group other than root's stands for "frappe".
        groups = [g for g in grp.getgrall() if g.gr_gid not in (0, OWN_GID)]
        if not groups:
            raise unittest.SkipTest("no group besides root's")
        self.group = groups[0]
        example = tomllib.loads(EXAMPLE.read_text())
        self.mode = int(example["socket_mode"], 8)
        # /tmp/<base> plays /run (0755, root's); <base>/btu_scheduler the runtime directory.
        self.base = tempfile.mkdtemp(prefix="btuperm", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.base, True)
        os.chmod(self.base, 0o755)

    async def serve(self, directory_mode: int) -> str:
        """The daemon's socket in a runtime directory of ``directory_mode``; returns its path."""
        runtime = os.path.join(self.base, f"btu_scheduler-{directory_mode:o}")
        os.mkdir(runtime)
        os.chmod(runtime, directory_mode)
        path = os.path.join(runtime, "btu_scheduler.sock")
        service = ControlSocketService(reactor, path, Factory.forProtocol(Protocol),
                                       mode=self.mode, group=self.group.gr_name)
        await service.startService()
        self.addCleanup(service.stopService)
        info = os.stat(path)
        self.assertEqual((info.st_mode & 0o777, info.st_gid), (self.mode, self.group.gr_gid))
        return path

    def connect_as(self, uid: int, groups: list[int], path: str) -> str:
        try:
            result = subprocess.run(
                [self.python, "-I", "-S", "-c", _CONNECT, path], user=uid, group=OWN_GID,
                extra_groups=groups, cwd="/", env={"PATH": "/usr/bin:/bin"},
                capture_output=True, text=True, timeout=30, check=False,
            )
        except PermissionError as error:  # no CAP_SETUID here after all
            raise unittest.SkipTest(f"cannot start a process as another user: {error}") from None
        return (result.stdout + result.stderr).strip()

    async def test_group_members_connect_and_others_are_refused(self) -> None:
        """With the unit's directory mode, a member of the socket's group connects; others get
        Permission denied."""
        path = await self.serve(_runtime_directory_mode())
        self.assertEqual(self.connect_as(MEMBER_UID, [self.group.gr_gid], path), "ok")
        self.assertEqual(self.connect_as(STRANGER_UID, [], path), "denied")

    async def test_a_0750_directory_locked_the_web_workers_out(self) -> None:
        """The old RuntimeDirectoryMode=0750 (directory group: the daemon's) refused even
        members of the socket's group: the failure seen on the bench."""
        self.assertNotEqual(_runtime_directory_mode(), 0o750)
        path = await self.serve(0o750)
        self.assertEqual(self.connect_as(MEMBER_UID, [self.group.gr_gid], path), "denied")
