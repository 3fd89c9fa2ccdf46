"""Run one btu_twisted ``BtuService`` in this process with the real reactor.

``python -m bench.daemon_case SPEC.json`` — the orchestrator (:mod:`bench.run`)
writes the spec and reads one JSON line from stdout.  A fresh process per case,
because a reactor cannot be restarted.

The service is built as ``twistd btu`` builds it (``BtuService(config,
reactor)``), from a config dict like the integration tests' ``config_values``,
and logs at ``tracing_level`` to a file through a twisted.logger text
observer, as a daemon does, so log formatting is part of what is measured.

Modes:

``plan``
    Time from ``startService()`` to ``ZCARD btu_scheduler:task_execution_times``
    reaching ``expected`` (polled every ``poll`` seconds through the daemon's
    own Redis gateway, one cheap command per poll).
``run``
    Start, wait until ``expected`` ids are on the queue or ``deadline`` passes
    (polled every 0.1 s, only after ``first_due``), stop.  Landing times are
    measured by :mod:`bench.watcher`, not here; this reports the daemon's own
    counters for comparison.

With ``profile`` set, the whole run is under cProfile and the stats are
written to that path.  With ``trace`` set, a few of the service's coroutine
methods are wrapped (on the instances, the daemon's code is untouched) to
record when each call started and ended; the spans are written to that path
as JSON ``[[what, start, end, size], ...]``.  With ``patch`` set (from the
``BTU_BENCH_PATCH`` environment variable of :mod:`bench.run`), that Python file
is run and its ``patch_service(service, reactor)`` is called on the new
service before it starts: a way to measure a candidate daemon change without
editing the tree.  Results of a patched run are marked as such.
"""

from __future__ import annotations

import cProfile
import gc
import json
import runpy
import sys
import time
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from btu_twisted.config import log_level, parse_config
from btu_twisted.daemon.service import BtuService
from btu_twisted.ops.stats import lateness_summary
from btu_twisted.store.schedule_store import SCHEDULE_SET

TRACED = (
    ("timer", "_step"),
    ("timer._claims", "claim_due"),
    ("timer._building", "_build_all"),
    ("timer._building", "_build_chunk"),
    ("store", "claim"),
    ("store", "window"),
    ("store", "plan"),
    ("db", "read_schedules"),
    ("sources", "read_schedules"),
    ("planner", "plan"),
)


def install_trace(service: BtuService, spans: list[list[Any]]) -> None:
    """Record (what, start, end, size) for each call of the TRACED methods,
    and every garbage collection (``gc.genN``, size = objects collected).
    A daemon without MariaDB (a schedules file only) has no ``db`` to trace."""
    gc_start: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[:] = [time.time()]
        elif gc_start:
            spans.append([f"gc.gen{info['generation']}", gc_start[0], time.time(),
                          info.get("collected")])

    gc.callbacks.append(on_gc)

    # txredisapi turning a big command (a claim or a plan script) into bytes.
    import txredisapi

    build = txredisapi.BaseRedisProtocol._build_command

    def traced_build(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) < 1000:
            return build(self, *args, **kwargs)
        start = time.time()
        try:
            return build(self, *args, **kwargs)
        finally:
            spans.append(["redis.encode", start, time.time(), len(args)])

    txredisapi.BaseRedisProtocol._build_command = traced_build
    for owner_name, method_name in TRACED:
        # A dotted owner is a part of a part (the timer's builds and claims).
        owner: Any = service
        for attribute in owner_name.split("."):
            owner = getattr(owner, attribute) if owner is not None else None
        if owner is None:
            continue
        original = getattr(owner, method_name)
        label = f"{owner_name}.{method_name}"

        def wrapper(*args: Any, _original: Any = original, _label: str = label) -> Any:
            size = len(args[0]) if args and hasattr(args[0], "__len__") else None
            if _label == "store.plan" and len(args) > 1:
                size = len(args[1])
            start = time.time()
            span = [_label, start, None, size]
            spans.append(span)

            async def run() -> Any:
                try:
                    return await _original(*args)
                finally:
                    span[2] = time.time()

            return run()

        setattr(owner, method_name, wrapper)


def start_logging(path: str, level: LogLevel) -> None:
    stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observer = FilteringLogObserver(textFileLogObserver(stream), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def run_case(reactor: Any, spec: dict[str, Any]) -> dict[str, Any]:
    config, warnings = parse_config(spec["config"])
    fatal: list[str] = []
    service = BtuService(config, reactor, on_fatal=fatal.append, warnings=warnings)
    spans: list[list[Any]] = []
    if spec.get("patch"):
        runpy.run_path(spec["patch"])["patch_service"](service, reactor)
    if spec.get("trace"):
        install_trace(service, spans)
    expected = int(spec["expected"])
    out: dict[str, Any] = {"mode": spec["mode"], "expected": expected}
    t0 = time.time()
    out["start_wall"] = t0
    started = service.startService()
    await started
    out["started_secs"] = time.time() - t0
    if fatal:
        out["fatal"] = fatal
        return out
    try:
        if spec["mode"] == "plan":
            await _plan(reactor, service, spec, expected, t0, out)
        else:
            await _run(reactor, service, spec, expected, t0, out)
    finally:
        await service.stopService()
    out["planned_total"] = service.planner.planned_total
    out["planner_batches"] = service.planner.batches
    out["refresh"] = {k: v for k, v in service.refresh.last.items() if k != "at"}
    out["timer"] = {
        "enqueued": service.timer.stats.enqueued,
        "skipped": service.timer.stats.skipped,
        "lost": service.timer.stats.lost,
        "lateness": lateness_summary(service.timer.stats.lateness),
    }
    if fatal:
        out["fatal"] = fatal
    if spec.get("trace"):
        with open(spec["trace"], "w", encoding="utf-8") as f:
            json.dump(spans, f)
    return out


async def _plan(reactor: Any, service: BtuService, spec: dict[str, Any], expected: int,
                t0: float, out: dict[str, Any]) -> None:
    poll = float(spec.get("poll", 0.01))
    deadline = t0 + float(spec.get("timeout", 60))
    planner_done = None
    count = 0
    while time.time() < deadline:
        count = int(await service.redis.command("ZCARD", SCHEDULE_SET))
        now = time.time()
        if planner_done is None and service.planner.planned_total >= expected:
            planner_done = now - t0
        if count >= expected:
            out["plan_secs"] = now - t0
            break
        await sleep(reactor, poll)
    out["zcard"] = count
    out["planner_done_secs"] = planner_done


async def _run(reactor: Any, service: BtuService, spec: dict[str, Any], expected: int,
               t0: float, out: dict[str, Any]) -> None:
    queue = "rq:queue:" + spec.get("queue", "default")
    first_due = float(spec["first_due"])
    deadline = float(spec["deadline"])
    while time.time() < first_due - 0.5:
        if "plan_secs" not in out:
            count = int(await service.redis.command("ZCARD", SCHEDULE_SET))
            if count >= expected:
                out["plan_secs"] = time.time() - t0
        await sleep(reactor, 0.1)
    out["margin_secs"] = first_due - (t0 + out.get("plan_secs", float("nan")))
    landed = 0
    while time.time() < deadline:
        landed = int(await service.redis.command("LLEN", queue))
        if landed >= expected:
            break
        await sleep(reactor, 0.1)
    out["landed"] = landed


def main(argv: list[str]) -> None:
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    start_logging(spec["log_file"], log_level(parse_config(spec["config"])[0]))
    result: dict[str, Any] = {}

    def go(reactor: Any) -> Deferred[None]:
        d = Deferred.fromCoroutine(run_case(reactor, spec))
        d.addCallback(result.update)
        return d

    profile_path = spec.get("profile")
    if profile_path:
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        task.react(go)
    except SystemExit as e:
        if profile_path:
            profiler.disable()
            profiler.dump_stats(profile_path)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        raise SystemExit(e.code) from None


if __name__ == "__main__":
    main(sys.argv[1:])
