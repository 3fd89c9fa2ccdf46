"""The benchmarks' smoke: every case tiny, in about a minute (``python -m bench.run --smoke``).

It checks that each benchmark still runs, not what it measures: every case
of :mod:`bench.run` (20-200 schedules, due 5 s after the case starts, 1 s
idle windows, one ``burst10k_paired`` pair), then ``bench.scale``, ``bench.hosting``,
``bench.micro``, ``bench.cli_speed`` and ``bench.soak`` as small as they go.
A step fails when it exits non-zero (a ``bench.run`` case fails when it
raises, reports an error, or a job is missing, early or doubled); the smoke
exits 1 if any step failed.

Nothing shared is touched destructively.  Each step runs in a child process
with a ``redis-server`` of its own on a free loopback port
(:class:`bench.private_services.PrivateRedis`, no persistence), named to it by
``BTU_TEST_REDIS_PORT`` (with the server's ``run_id``, which every flush checks) and
``BTU_BENCH_PRIVATE_REDIS_PORT`` (then no machine-wide lock is taken: nobody
else uses that server); ``bench.run --smoke`` refuses to run its cases
without that.  MariaDB is the one the integration tests use; the steps only
create ``btu_bench_*`` databases and drop each one they made (the smoke never
drops leftovers: another run may own them).  ``bench.soak`` starts its own
MariaDB and Redis anyway.  The steps' logs and results go to a temporary
directory (``BTU_BENCH_RESULTS``), removed when every step passed and kept,
with its path printed, when one failed.

The steps run side by side (most of their time is waiting for a due second),
and the ``bench.run`` cases in three groups by Redis database number.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from bench.private_services import PrivateRedis, remove_tree

ROOT = Path(__file__).resolve().parent.parent

#: bench.run's cases in groups that run side by side, each on its own Redis.
GROUPS = (
    ("run-a", ("plan", "burst", "spread", "burst10k", "burst10k_paired", "ceiling10k")),
    ("run-b", ("burst10k_x3", "file_burst", "file_spread", "idle", "ping", "file_idle")),
    ("run-anchors", ("anchor_burst", "anchor_rqs_burst", "anchor_spread", "anchor_burst10k",
                     "anchor_spread10k", "anchor_idle")),
)

#: The benchmarks outside bench.run, as small as they go.
MODULES = (
    # The soak's restarts need a run of some length: 4 outages of 5 s each.
    ("soak", ("bench.soak", "--minutes", "1")),
    ("scale", ("bench.scale", "--n", "300", "--cancels", "5")),
    ("hosting", ("bench.hosting", "--sites", "20", "--settle-secs", "1", "--idle-secs", "3",
                 "--lead-secs", "10", "--quiet-secs", "1", "--sighup-sites", "3",
                 "--sighup-period", "1", "--sighup-after-secs", "5")),
    ("micro", ("bench.micro",)),
    ("cli_speed", ("bench.cli_speed", "--runs", "1", "--starts", "1", "--schedules", "5")),
)

#: A step still running after this long is stopped and fails.
STEP_TIMEOUT = 300.0


class Step(NamedTuple):
    name: str
    argv: tuple[str, ...]


def steps(cases: Sequence[str] | None = None) -> list[Step]:
    """Every step; with ``cases``, only the bench.run groups' share of them."""
    out = []
    for name, group in GROUPS:
        chosen = [c for c in group if cases is None or c in cases]
        if chosen:
            out.append(Step(name, ("bench.run", "--smoke", "--only", ",".join(chosen))))
    if cases is None:
        out += [Step(name, argv) for name, argv in MODULES]
    return out


class Running:
    """One step's child process, its private Redis and its files."""

    def __init__(self, step: Step, base: Path) -> None:
        self.step = step
        self.directory = base / step.name
        self.results = self.directory / "results"
        self.results.mkdir(parents=True)
        self.log_path = self.directory / "output.log"
        self.redis = PrivateRedis(self.directory)
        self.redis.start()
        env = dict(os.environ)
        env.update({
            "BTU_TEST_REDIS_PORT": str(self.redis.port),
            # The smoke's own server, as it answers (tests/integration/support.py, RUN_ID).
            "BTU_TEST_REDIS_RUN_ID": self.redis.run_id(),
            "BTU_BENCH_PRIVATE_REDIS_PORT": str(self.redis.port),
            "BTU_BENCH_RESULTS": str(self.results),
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
            "PYTHONUNBUFFERED": "1",
        })
        self.began = time.monotonic()
        with open(self.log_path, "wb") as log:
            # A session of its own: a step that outlives its time is stopped
            # with every process it started (daemons, watchers), and only those.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *step.argv], cwd=str(ROOT), env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.secs: float | None = None
        self.timed_out = False

    def poll(self) -> bool:
        """True once the step has ended (or was stopped for its time)."""
        if self.secs is not None:
            return True
        if self.proc.poll() is None and time.monotonic() - self.began > STEP_TIMEOUT:
            self.timed_out = True
            self.kill()
        if self.proc.poll() is None:
            return False
        self.secs = time.monotonic() - self.began
        self.kill()  # whatever the step left running in its session
        self.redis.stop()
        return True

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.proc.returncode == 0


def main(cases: Sequence[str] | None = None) -> int:
    began = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="btu-bench-smoke-"))
    todo = steps(cases)
    running: list[Running] = []
    try:
        for step in todo:
            running.append(Running(step, base))
            print(f"smoke: started {step.name}: python -m {' '.join(step.argv)}", flush=True)
        pending = list(running)
        while pending:
            time.sleep(0.2)
            for r in [r for r in pending if r.poll()]:
                pending.remove(r)
                state = "ok" if r.ok else ("TIMED OUT" if r.timed_out
                                           else f"FAILED (exit {r.proc.returncode})")
                print(f"smoke: {r.step.name} {state} in {r.secs:.1f} s", flush=True)
    finally:
        for r in running:
            if not r.poll():
                r.kill()
            r.redis.stop()
    failed = [r for r in running if not r.ok]
    for r in failed:
        tail = r.log_path.read_text(errors="replace").splitlines()[-40:]
        print(f"\n--- {r.step.name}: last lines of {r.log_path}", *tail, sep="\n")
    wall = time.monotonic() - began
    if failed:
        print(f"\nsmoke FAILED: {', '.join(r.step.name for r in failed)} "
              f"({len(running)} steps, {wall:.1f} s); logs kept in {base}")
        return 1
    remove_tree(base)
    print(f"smoke passed: {len(running)} steps in {wall:.1f} s")
    return 0
