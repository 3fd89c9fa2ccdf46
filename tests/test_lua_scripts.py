"""The Lua scripts ship as files, and every one of them is read from its file.

The scripts are package data (``btu_twisted/store/lua/*.lua``), so a build
that forgets them fails only once installed, at the daemon's first import:
one test builds and installs the package into a throw-away directory and
reads every script from there, outside this checkout.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial import unittest

from btu_twisted.store import scripts
from btu_twisted.store.schedule_store import RECENT_SECS

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "btu_twisted" / "store" / "lua"
# Enough of the checkout for `pip install .`: the package, its plugin, the metadata.
SOURCES = ("btu_twisted", "twisted", "pyproject.toml", "README.rst")
# Read each script from the installed package; prints {name: text}.
READ_ALL = """
import json, sys
from btu_twisted.store import scripts
print(json.dumps({"file": scripts.__file__,
                  "texts": {n: scripts.load(n) for n in sys.argv[1:]}}))
"""
SKIP_IF = ("No matching distribution found", "Could not find a version")


class ScriptFiles(unittest.TestCase):
    def test_every_file_is_a_named_script(self) -> None:
        on_disk = sorted(p.stem for p in LUA.glob("*.lua"))
        self.assertEqual(on_disk, sorted(scripts.NAMES))
        for name in scripts.NAMES:
            self.assertEqual(getattr(scripts, name.upper()), scripts.load(name))

    def test_shebang_first_header_names_keys_and_reply(self) -> None:
        for path in LUA.glob("*.lua"):
            text = path.read_text()
            body = text.partition("\n")[2] if text.startswith("#!") else text
            self.assertNotIn("#!", body, path.name)  # Redis 7 reads it only on line 1
            self.assertTrue(body.startswith("--[["), path.name)
            header = body.partition("]]")[0]
            self.assertIn("Output:", header, path.name)
            used = set(re.findall(r"KEYS\[(\d+)\]", body.partition("]]")[2]))
            for i in used:
                self.assertRegex(header, rf"KEYS\[{i}\]|KEYS\[\d \+ ", f"{path.name} KEYS[{i}]")

    def test_recent_secs_agrees(self) -> None:
        self.assertIn(f"<= {RECENT_SECS})", scripts.FORGET_LAST_RUNS)

    def test_no_lua_left_in_python(self) -> None:
        for path in (ROOT / "btu_twisted").rglob("*.py"):
            self.assertNotIn("redis.call(", path.read_text(), str(path))


class InstalledPackage(unittest.TestCase):
    def test_installed_package_ships_every_script(self) -> None:
        """``pip install .`` into a temporary directory, then read every script
        there from a process whose path holds only that directory."""
        work = Path(tempfile.mkdtemp(prefix="btu-lua-"))
        self.addCleanup(shutil.rmtree, work, True)
        source, target = work / "src", work / "installed"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
        for name in SOURCES:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, source / name, ignore=ignore)
            else:
                shutil.copy2(ROOT / name, source / name)
        built = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--disable-pip-version-check", "--target", str(target), str(source)],
            capture_output=True, text=True, timeout=120, cwd=work,
        )
        if built.returncode != 0 and any(s in built.stderr for s in SKIP_IF):
            raise unittest.SkipTest(f"no build backend to install with: {built.stderr[-500:]}")
        self.assertEqual(built.returncode, 0, built.stderr[-2000:])
        names = sorted(p.stem for p in LUA.glob("*.lua"))
        read = subprocess.run(
            [sys.executable, "-c", READ_ALL, *names], capture_output=True, text=True,
            timeout=60, cwd=work, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        )
        self.assertEqual(read.returncode, 0, read.stderr[-2000:])
        found = json.loads(read.stdout)
        self.assertTrue(Path(found["file"]).is_relative_to(target), found["file"])
        for name in names:
            text = found["texts"][name]
            self.assertTrue(text.strip(), name)
            self.assertEqual(text, (LUA / f"{name}.lua").read_text(), name)
