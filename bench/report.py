"""The benchmark's output: the machine it ran on, the table and the ratios
(moved out of :mod:`bench.run`)."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from bench.fixtures import REDIS_DB_OURS, sync_redis
from bench.harness import ROOT
from bench.stats import ratio
from tests.integration import support


def _diff_sha1(diff: str) -> str:
    import hashlib

    return hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else ""


def machine() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    r = sync_redis(REDIS_DB_OURS)
    info = r.info("server")
    conn = support.admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            mariadb = cur.fetchone()[0]
    finally:
        conn.close()
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=str(ROOT), capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        # The daemon measured is the working tree; say so when it differs from the commit.
        "btu_twisted_dirty": bool(git("status", "--porcelain", "--", "btu_twisted")),
        # Which uncommitted tree it was (empty when clean).
        "btu_twisted_diff_sha1": _diff_sha1(git("diff", "HEAD", "--", "btu_twisted")),
        "nproc": len(os.sched_getaffinity(0)),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rq": version("rq"),
        "Twisted": version("Twisted"),
        "txredisapi": version("txredisapi"),
        "croniter": version("croniter"),
        "PyMySQL": version("PyMySQL"),
        "redis_server": info.get("redis_version"),
        "mariadb_server": mariadb,
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}" if abs(value) >= 10 else f"{value:.2f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [("case", "N", "p50 ms", "p99 ms", "max ms", "last ms",
                                     "jobs/s S->last", "jobs/s first->last", "notes")]
    plan = results["cases"].get("plan")
    if plan:
        rows.append(("plan", _fmt(plan["expected"]), "", "", "", "", "", "",
                     f"startService -> all in ZSET: {plan.get('plan_secs', float('nan')):.3f} s"
                     f" (target < 2 s; {plan.get('distinct_crons')} crons,"
                     f" {plan.get('planner_batches')} batches)"))
    for case in ("burst", "anchor_burst", "anchor_rqs_burst", "spread", "anchor_spread",
                 "burst10k", "burst10k_x3", *FILE_LATENESS_CASES):
        r = results["cases"].get(case)
        if not r:
            continue
        if r.get("error"):
            rows.append((case, _fmt(r.get("expected")), "", "", "", "", "", "",
                         f"NOT MEASURED: {r['error'][:160]}"))
            continue
        w = r["watcher"]
        note = f"landed {r['landed']}/{r['expected']}"
        if r.get("early"):
            note += f", {r['early']} EARLY"
        if case == "anchor_rqs_burst":
            v = r.get("versions", {})
            note += (f" (rqscheduler --interval {r.get('interval_secs'):g},"
                     f" rq-scheduler {v.get('rq-scheduler')}, rq {v.get('rq')})")
        elif case.startswith("anchor"):
            note += " (rq cron)"
        elif case == "burst10k_x3":
            once = "EXACTLY ONCE" if r.get("exactly_once") else "NOT EXACTLY ONCE"
            note += f"; 3 daemons: {once} ({r.get('doubles')} doubles, {r.get('missing')} missing)"
        else:
            if r.get("source") == "file":
                note += " (schedules file, no MariaDB)"
            e = r["enqueued_at"]
            note += (f"; first landed {_fmt(r.get('first_landing_after_due_ms'))} ms after due;"
                     f" enqueued_at p99 {_fmt(e.get('p99_ms'))}")
        burst = "burst" in case
        rate = r.get("rate_due_to_last_per_s") if burst else None
        rate2 = r.get("rate_first_to_last_per_s") if burst else None
        rows.append((case, _fmt(r["expected"]), _fmt(w.get("p50_ms")), _fmt(w.get("p99_ms")),
                     _fmt(w.get("max_ms")), _fmt(r.get("last_landing_after_due_ms")),
                     _fmt(rate), _fmt(rate2), note))
    c = results["cases"].get("ceiling10k")
    if c:
        m, o = c["minimal"], c["claim_script"]
        note = (f"Redis-side: minimal script {m['us_per_job']:.2f} us/job, CLAIM"
                f" {o['us_per_job']:.2f} us/job ({o['jobs_per_s']:,}/s), longest"
                f" {c['batch']}-job CLAIM {o['call_ms_max']:.2f} ms; filing history after:"
                f" {o.get('history_fold_us_per_job') or 0:.2f} us/job; with parsing"
                f" (Redis CPU): minimal {_fmt(m.get('redis_cpu_us_per_job'))},"
                f" CLAIM {_fmt(o.get('redis_cpu_us_per_job'))} us/job")
        rows.append(("ceiling10k", _fmt(c["expected"]), "", "", "", "", _fmt(m["jobs_per_s"]), "",
                     note))
    p = results["cases"].get("burst10k_paired")
    if p:
        note = "; ".join(
            f"{_fmt(q['burst_jobs_per_s'])}/s vs ceiling {_fmt(q['ceiling_jobs_per_s'][0])}"
            f"..{_fmt(q['ceiling_jobs_per_s'][1])}/s = {_fmt(q['ratio'])}"
            f" (first {_fmt(q['first_landing_after_due_ms'])} ms)" for q in p["pairs"])
        rows.append(("burst10k_paired", _fmt(p["expected"]), "", "", "", "", "", "",
                     ("" if p["landed_all"] else "NOT ALL LANDED; ") + note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += idle_lines(results["cases"])
    for name, value in results.get("ratios", {}).items():
        lines.append(f"ratio {name}: {value}")
    m = results["machine"]
    if results.get("patched"):
        lines.append(f"PATCHED daemon (BTU_BENCH_PATCH={results['patched']}): not the tree's figures")
    if results.get("profiled"):
        lines.append("PROFILED daemon (cProfile): slower than real")
    lines.append(
        f"btu_twisted at {m['commit']}"
        f"{' + uncommitted changes (diff ' + m['btu_twisted_diff_sha1'] + ')' if m['btu_twisted_dirty'] else ''}; "
        f"machine: nproc {m['nproc']}, {m['date']}, Python {m['python']}, rq {m['rq']}, "
        f"Twisted {m['Twisted']}, Redis {m['redis_server']}, MariaDB {m['mariadb_server']}"
    )
    return "\n".join(lines)


#: The schedules-file lateness cases and their rq cron anchors (rows of the table).
FILE_LATENESS_CASES = ("file_burst", "anchor_burst10k", "file_spread", "anchor_spread10k")
#: Each lateness case and the rq cron case with the same jobs at the same instants.
ANCHORED = (("burst", "anchor_burst"), ("spread", "anchor_spread"),
            ("file_burst", "anchor_burst10k"), ("file_spread", "anchor_spread10k"),
            ("burst10k", "anchor_burst10k"))
#: The same jobs read from a schedules file and from MariaDB (same N in a full run).
FILE_VS_MARIADB = (("file_burst", "burst10k"),)


def lateness_ratios(ours: dict[str, Any], other: dict[str, Any], label: str,
                    burst: bool, landings: bool) -> dict[str, float | None]:
    """``ours``/``other`` for p50/p99/max (and the first landing, and a burst's last
    landing and jobs/s; a spread's last landing is mostly its 60 s)."""
    out = {f"{key} {label}": ratio(ours["watcher"].get(key), other["watcher"].get(key))
           for key in ("p50_ms", "p99_ms", "max_ms")}
    if landings:
        for key in ("first_landing_after_due_ms", "last_landing_after_due_ms")[:2 if burst else 1]:
            out[f"{key} {label}"] = ratio(ours.get(key), other.get(key))
    if burst:
        out[f"jobs/s {label}"] = ratio(ours.get("rate_due_to_last_per_s"),
                                       other.get("rate_due_to_last_per_s"))
    return out


def ratios(cases: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    pairs = [(o, a, "ours/rq-cron") for o, a in ANCHORED]
    pairs += [(f, m, "file/mariadb") for f, m in FILE_VS_MARIADB]
    for ours, other, label in pairs:
        if cases.get(ours) and cases.get(other):
            # The older pairs keep the keys they always had (no first/last landing).
            new = ours.startswith("file_") or other.endswith("10k")
            for key, value in lateness_ratios(cases[ours], cases[other], label,
                                              "burst" in ours, new).items():
                out[f"{ours} {key}"] = value
    ceiling = cases.get("ceiling10k")
    for case in ("burst10k", "burst10k_x3"):
        if ceiling and cases.get(case) and not cases[case].get("error"):
            out[f"{case} jobs/s / Redis-side ceiling"] = ratio(
                cases[case].get("rate_due_to_last_per_s"), ceiling.get("ceiling_jobs_per_s"))
    paired = cases.get("burst10k_paired")
    if paired:
        out["burst10k_paired jobs/s / Redis-side ceiling (median of bracketed pairs)"] = \
            paired.get("median_ratio")
        out["burst10k_paired jobs/s / ceiling with parsing (median of bracketed pairs)"] = \
            paired.get("median_ratio_with_parsing")
    rqs = cases.get("anchor_rqs_burst")
    if "burst" in cases and rqs and not rqs.get("error"):
        for key in ("p50_ms", "p99_ms", "max_ms"):
            out[f"burst {key} ours/rq-scheduler"] = ratio(
                cases["burst"]["watcher"].get(key), rqs["watcher"].get(key))
        out["burst jobs/s ours/rq-scheduler"] = ratio(
            cases["burst"].get("rate_due_to_last_per_s"), rqs.get("rate_due_to_last_per_s"))
    for case, other, label in (("idle", "anchor_idle", "ours/rq-cron"),
                               ("file_idle", "anchor_idle", "ours/rq-cron"),
                               ("file_idle", "idle", "file/mariadb")):
        idle, anchor = cases.get(case), cases.get(other)
        if idle and anchor:
            out[f"{case} CPU s/min {label}"] = ratio(
                idle.get("cpu_secs_per_min"), anchor.get("cpu_secs_per_min"))
            out[f"{case} CPU (schedstat) {label}"] = ratio(
                idle.get("cpu_schedstat_secs"), anchor.get("cpu_schedstat_secs"))
            out[f"{case} RSS {label}"] = ratio(idle.get("rss_after_mib"),
                                               anchor.get("rss_after_mib"))
    ping = cases.get("ping")
    if ping and ping.get("baseline_1_client"):
        base = ping["baseline_1_client"]
        for key in ("p50_ms", "p99_ms", "max_ms"):
            out[f"ping {key} 200 clients/1 client"] = ratio(ping.get(key), base.get(key))
    return out


def idle_lines(cases: dict[str, Any]) -> list[str]:
    """The idle and ping cases, one line each, under the lateness table."""
    lines: list[str] = []
    for case, who in (("idle", "btu_twisted (twistd -n btu)"),
                      ("file_idle", "btu_twisted (twistd -n btu), schedules file, no MariaDB"),
                      ("anchor_idle", "rq cron")):
        r = cases.get(case)
        if not r:
            continue
        extra = (f", polling {r['scheduler_polling_interval']} s" if case != "anchor_idle" else "")
        lines.append(
            f"{case}: {who}, {r['schedules']:,} schedules, nothing due{extra}: "
            f"CPU {r['cpu_secs']:.2f} s in {r['window_secs']:.0f} s "
            f"(schedstat {r['cpu_schedstat_secs']:.4f} s) "
            f"({r['cpu_secs_per_min']:.3f} s/min, {r['cpu_percent_of_one_core']:.2f}% of a core; "
            f"user {r['cpu_user_secs']:.2f}, system {r['cpu_system_secs']:.2f}); "
            f"RSS {r['rss_before_mib']:.1f} -> {r['rss_after_mib']:.1f} MiB")
    p = cases.get("ping")
    if p:
        b = p.get("baseline_1_client", {})
        lines.append(
            f"ping: {p['clients']} clients x {p['rounds']} rounds = {p['samples']:,} pings on the "
            f"idle daemon ({p['schedules']:,} schedules): p50 {_fmt(p.get('p50_ms'))} ms, "
            f"p99 {_fmt(p.get('p99_ms'))} ms, max {_fmt(p.get('max_ms'))} ms, "
            f"{_fmt(p.get('pings_per_s'))} pings/s, {p['errors']} errors, daemon CPU "
            f"{_fmt(p.get('daemon_cpu_secs'))} s in {_fmt(p.get('wall_secs'))} s; 1 client alone: "
            f"p50 {_fmt(b.get('p50_ms'))} ms, p99 {_fmt(b.get('p99_ms'))} ms, "
            f"max {_fmt(b.get('max_ms'))} ms, {_fmt(b.get('pings_per_s'))} pings/s")
    return lines
