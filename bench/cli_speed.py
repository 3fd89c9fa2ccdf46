"""Start-up and command-line speed: ``python -m bench.cli_speed [--runs 20] [--starts 10]``.

``start``
    ``twistd -n --pidfile= btu --config X`` spawned ``--starts`` times (10),
    each time from before ``Popen`` until the first ``pong`` read on its
    socket (the socket is poll-connected every millisecond; a ping is sent as
    soon as a connection is accepted).  Its RSS at that moment is read from
    ``/proc``.  Then SIGTERM, and the next start.
``cli``
    against one running daemon (the same config): ``btu ping``, ``btu status``
    and ``btu next-runs "0 13 * * 1-5"`` (with ``--config``), each run
    ``--runs`` times (20) as a person runs them (the venv's ``btu`` script,
    ``PYTHONPATH`` = the checkout), wall time from ``fork`` to exit.  In the
    same run, as anchors: ``python -c pass`` (the interpreter's floor),
    ``rq --help`` and ``rq info`` against the same Redis.
``importtime``
    ``python -X importtime -m btu_twisted.cli ping`` and the daemon's
    ``tap.makeService`` (in a child process): the modules with the largest
    self time, and the total.

The checkout's modules are byte-compiled first (``compileall``), as ``pip
install`` leaves them: with ``PYTHONDONTWRITEBYTECODE`` set they would
otherwise be compiled again on every run, and that would be timed.

The daemon runs ``job_builder = "function"`` with a few schedules in a
``btu_bench_*`` database and Redis database 10 (locked as ``bench.run`` locks
it, see README.rst).  Figures go to ``bench/results/cli_speed.json`` and a
table.  Wall times on a shared machine are noisy: compare against the anchors
of the same run.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import fixtures
from bench.fixtures import REDIS_DB_OURS, BenchDatabase, flush, redis_dbs_locked, schedule_names
from bench.harness import RESULTS, daemon_config
from bench.idle import idle_crons, proc_sample
from bench.stats import percentile, ratio
from btu_twisted.cli.common import CliError
from btu_twisted.cli.daemon import request
from tests.integration import support

ROOT = fixtures.ROOT
BIN = Path(sys.executable).parent
NEXT_RUNS = ["next-runs", "0 13 * * 1-5"]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def _twistd(config: Path) -> list[str]:
    script = BIN / "twistd"
    base = [str(script)] if script.exists() else list(support.TWISTD)
    return base + ["-n", "--pidfile=", "btu", "--config", str(config)]


def timings(samples: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {"runs": len(ordered),
            "min_ms": round(ordered[0] * 1000, 1),
            "p50_ms": round(percentile(ordered, 0.5) * 1000, 1),
            "p90_ms": round(percentile(ordered, 0.9) * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


def try_ping(path: str) -> bool:
    """One ping (the ``btu`` command's own client); False while nobody listens yet."""
    try:
        reply = request(path, "ping", None)
    except CliError:
        return False
    if reply != "pong":
        raise RuntimeError(f"the daemon answered {reply!r} to ping")
    return True


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_once(config: Path, socket_path: str, log: Path) -> dict[str, float]:
    """Spawn twistd, return seconds to the first pong and the RSS then."""
    with open(log, "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(_twistd(config), cwd=str(ROOT), env=_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        while not try_ping(socket_path):
            if proc.poll() is not None:
                raise RuntimeError(f"twistd exited {proc.returncode}; see {log}")
            if time.perf_counter() - t0 > 60:
                raise RuntimeError(f"no pong within 60 s; see {log}")
            time.sleep(0.001)
        elapsed = time.perf_counter() - t0
        return {"secs": elapsed, "rss_mib": proc_sample(proc.pid)["rss_mib"]}
    finally:
        stop(proc)


def wall(argv: list[str], runs: int, expect: int = 0) -> list[float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(argv, cwd="/", env=_env(), capture_output=True, check=False)
        samples.append(time.perf_counter() - t0)
        if done.returncode != expect:
            raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr[-1000:]!r}")
    return samples


def import_offenders(argv: list[str], top: int = 12) -> dict[str, Any]:
    """Run ``argv`` (a python command) with ``-X importtime``; the largest self times."""
    done = subprocess.run(argv[:1] + ["-X", "importtime"] + argv[1:], cwd="/", env=_env(),
                          capture_output=True, text=True, check=False)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|")
        rows.append((int(own), int(cumulative), name.rstrip()))
    total = sum(r[0] for r in rows)
    biggest = sorted(rows, reverse=True)[:top]
    return {"modules": len(rows), "total_self_ms": round(total / 1000, 1),
            "top_self": [[name.strip(), round(own / 1000, 1)] for own, _, name in biggest]}


@contextlib.contextmanager
def daemon_files(schedules: int) -> Iterator[tuple[Path, str]]:
    """A bench database with ``schedules`` schedules and a config for it."""
    flush(REDIS_DB_OURS)
    db = BenchDatabase()
    tmp = Path(tempfile.mkdtemp(prefix="btu-bench-cli-"))
    try:
        crons = idle_crons(time.time())
        db.add_schedules((name, crons[i % len(crons)])
                         for i, name in enumerate(schedule_names(schedules)))
        socket_path = str(tmp / "btu.sock")
        config = tmp / "btu_scheduler.toml"
        support.write_config(config, daemon_config(db.name, REDIS_DB_OURS,
                                                   socket_path=socket_path))
        yield config, socket_path
    finally:
        db.drop()
        flush(REDIS_DB_OURS)
        shutil.rmtree(tmp, ignore_errors=True)


def case_start(config: Path, socket_path: str, starts: int) -> dict[str, Any]:
    log = RESULTS / "cli_speed.twistd.log"
    log.unlink(missing_ok=True)
    runs = [start_once(config, socket_path, log) for _ in range(starts)]
    result = timings([r["secs"] for r in runs])
    result["rss_at_pong_mib"] = round(sorted(r["rss_mib"] for r in runs)[len(runs) // 2], 1)
    return result


def case_cli(config: Path, socket_path: str, runs: int) -> dict[str, Any]:
    log = RESULTS / "cli_speed.twistd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(_twistd(config), cwd=str(ROOT), env=_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while not try_ping(socket_path):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"twistd did not answer; see {log}")
            time.sleep(0.01)
        btu = [str(BIN / "btu")]
        redis_url = f"redis://{fixtures.REDIS_HOST}:{fixtures.REDIS_PORT}/{REDIS_DB_OURS}"
        commands = {
            "btu ping": btu + ["ping", "--config", str(config)],
            "btu status": btu + ["status", "--config", str(config)],
            "btu next-runs": btu + NEXT_RUNS + ["--config", str(config)],
            "python -c pass": [sys.executable, "-c", "pass"],
            "rq --help": [str(BIN / "rq"), "--help"],
            "rq info": [str(BIN / "rq"), "info", "--url", redis_url],
        }
        # Interleaved, so that a burst of load elsewhere hits every command alike.
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, argv in commands.items():
                samples[name] += wall(argv, 1)
        out_: dict[str, Any] = {name: timings(s) for name, s in samples.items()}
        for name in ("btu ping", "btu next-runs", "btu status"):
            out_[name]["ratio_p50_to_rq_info"] = ratio(out_[name]["p50_ms"],
                                                       out_["rq info"]["p50_ms"])
        return out_
    finally:
        stop(proc)


def case_importtime(config: Path) -> dict[str, Any]:
    python = sys.executable
    make_service = (
        "import sys; from btu_twisted import tap; o = tap.Options(); "
        f"o.parseOptions(['--config', {str(config)!r}]); tap.makeService(o)"
    )
    return {
        "btu ping": import_offenders([python, "-m", "btu_twisted.cli", "ping", "--config",
                                      str(config)]),
        "btu next-runs": import_offenders([python, "-m", "btu_twisted.cli", *NEXT_RUNS]),
        "makeService": import_offenders([python, "-c", make_service]),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{'case':<16} {'p50 ms':>8} {'p90 ms':>8} {'min ms':>8} {'max ms':>8}  note")
    for name, row in result.get("cli", {}).items():
        note = f"x{row['ratio_p50_to_rq_info']} of rq info" if "ratio_p50_to_rq_info" in row else ""
        print(f"{name:<16} {row['p50_ms']:>8} {row['p90_ms']:>8} {row['min_ms']:>8} "
              f"{row['max_ms']:>8}  {note}")
    if "start" in result:
        row = result["start"]
        print(f"{'twistd to pong':<16} {row['p50_ms']:>8} {row['p90_ms']:>8} {row['min_ms']:>8} "
              f"{row['max_ms']:>8}  RSS at pong {row['rss_at_pong_mib']} MiB")
    for name, imports in result.get("importtime", {}).items():
        top = ", ".join(f"{m} {ms}" for m, ms in imports["top_self"][:6])
        print(f"imports {name}: {imports['modules']} modules, {imports['total_self_ms']} ms; "
              f"largest: {top}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_speed", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (20)")
    parser.add_argument("--starts", type=int, default=10, help="twistd starts timed (10)")
    parser.add_argument("--schedules", type=int, default=20,
                        help="schedules in the daemon's database (20)")
    parser.add_argument("--only", default="start,cli,importtime")
    opts = parser.parse_args(argv)
    cases = set(opts.only.split(","))
    # As installed, modules come with their .pyc (pip compiles them); the
    # checkout has none while PYTHONDONTWRITEBYTECODE is set, and compiling
    # every module on every run would be timed instead.
    compileall.compile_dir(str(ROOT / "btu_twisted"), quiet=1)
    compileall.compile_dir(str(ROOT / "twisted"), quiet=1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                              "loadavg_before": os.getloadavg()}
    with redis_dbs_locked((REDIS_DB_OURS,)), daemon_files(opts.schedules) as (config, sock):
        if "importtime" in cases:
            result["importtime"] = case_importtime(config)
        if "start" in cases:
            result["start"] = case_start(config, sock, opts.starts)
        if "cli" in cases:
            result["cli"] = case_cli(config, sock, opts.runs)
    result["loadavg_after"] = os.getloadavg()
    (RESULTS / "cli_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
