"""Reading a soak run (:mod:`bench.soak`): RSS slopes, the log's error lines
inside and outside the outage windows, doubles and missing seconds, the
verdict and the table."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

OUTAGE_GRACE = 15.0       # after a service is back, errors still count as the outage's
REPLAN_LIMIT = 10.0       # the contract: every enabled schedule planned again within ~10 s
FIT_FRACTION = 0.8        # slope over the last 80 % of the run (8 of 10 minutes)
# RSS growing faster than this after the last restart is a leak (360 MiB a day).
# The slope over the whole fit window is only reported: the first MariaDB
# restarts raise the worker threads' malloc arenas to a high-water mark once.
QUIET_SLOPE_LIMIT = 0.25  # MiB per minute


def least_squares(points: list[tuple[float, float]]) -> float | None:
    """Slope of y over x by least squares."""
    if len(points) < 2:
        return None
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx


# -- the log --------------------------------------------------------------------------

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d{4}) \[([^\]]*)\] ?(.*)$")


def read_log(path: Path, windows: list[tuple[float, float]]) -> dict[str, Any]:
    """ERROR/CRITICAL and Traceback lines, inside and outside the outage windows."""
    counts = {"error_in_outage": 0, "error_outside": 0, "critical_in_outage": 0,
              "critical_outside": 0, "traceback_in_outage": 0, "traceback_outside": 0}
    outside: list[str] = []
    inside: dict[str, int] = defaultdict(int)
    lines = 0
    when = 0.0
    for line in path.read_text(errors="replace").splitlines():
        lines += 1
        m = _STAMP.match(line)
        if m:
            stamp = m.group(1)
            fmt = "%Y-%m-%dT%H:%M:%S.%f%z" if "." in stamp else "%Y-%m-%dT%H:%M:%S%z"
            when = datetime.strptime(stamp, fmt).timestamp()
            system, text = m.group(2), m.group(3)
            level = system.rsplit("#", 1)[1] if "#" in system else ""
        else:
            level, text = "", line
        in_outage = any(a - 1 <= when <= b + 1 for a, b in windows)
        where = "in_outage" if in_outage else "outside"
        kind = None
        if level in ("error", "critical"):
            kind = level
        elif "Traceback (most recent call last)" in line:
            kind = "traceback"
        if kind is None:
            continue
        counts[f"{kind}_{where}"] += 1
        summary = re.sub(r"\d+", "N", text.strip())[:160]
        if in_outage:
            inside[f"{kind}: {summary}"] += 1
        elif len(outside) < 40:
            outside.append(line[:400])
    return {"lines": lines, **counts, "outside_lines": outside,
            "in_outage_kinds": dict(sorted(inside.items(), key=lambda kv: -kv[1])[:20])}


def runs_report(runs: dict[tuple[str, int], set[str]], enqueued_at: dict[str, float],
                counts: dict[str, int], core_s: list[str], t0: float, end: float,
                windows: list[tuple[float, float]]) -> dict[str, Any]:
    """Doubles, seconds missing from the every-second schedules ``core_s``, lateness."""
    doubles = {f"{name}|{when}": sorted(ids) for (name, when), ids in runs.items()
               if len(ids) > 1}
    # Seconds the long-lived every-second schedules should have run, whole run.
    first, last = int(t0) + 2, int(end) - 3

    def in_window(second: float) -> bool:
        return any(a - 1 <= second <= b + 1 for a, b in windows)

    missing_in = missing_out = 0
    missing_by_outage = [0] * len(windows)
    missing_examples: list[str] = []
    for name in core_s:
        for second in range(first, last + 1):
            if (name, second) not in runs:
                if in_window(second):
                    missing_in += 1
                    for k, (a, b) in enumerate(windows):
                        if a - 1 <= second <= b + 1:
                            missing_by_outage[k] += 1
                else:
                    missing_out += 1
                    if len(missing_examples) < 10:
                        missing_examples.append(f"{name}|{second}")
    late = sorted(enqueued_at[job] - when
                  for (name, when), ids in runs.items() for job in ids
                  if job in enqueued_at and not in_window(when) and t0 <= when <= end)

    def pick(q: float) -> float | None:
        return round(late[min(len(late) - 1, int(q * len(late)))], 3) if late else None

    return {**counts, "distinct_runs": len(runs),
            "doubles": len(doubles), "double_examples": dict(list(doubles.items())[:10]),
            "core_missing_seconds_in_outages": missing_in,
            "core_missing_seconds_outside": missing_out,
            "core_missing_seconds_by_outage": missing_by_outage,
            "core_missing_examples": missing_examples,
            "lateness_outside_outages_secs": {"p50": pick(0.5), "p99": pick(0.99),
                                              "max": round(late[-1], 3) if late else None}}


def rss_report(samples: list[dict[str, Any]], duration: float,
               outages: list[dict[str, Any]]) -> dict[str, Any]:
    fit = [s for s in samples if s["t"] >= duration * (1 - FIT_FRACTION) - 1]
    slope = least_squares([(s["t"] / 60, s["rss_mib"]) for s in fit])
    # After the last outage (and its grace) nothing but steady work and churn.
    quiet_from = max((o["t_up"] for o in outages), default=0.0) + OUTAGE_GRACE
    quiet = [s for s in samples if s["t"] >= quiet_from]
    quiet_slope = least_squares([(s["t"] / 60, s["rss_mib"]) for s in quiet])
    steps = []
    for o in outages:   # RSS just before a restart and once its grace is over
        before = [s["rss_mib"] for s in samples if s["t"] < o["t_down"]]
        after = [s["rss_mib"] for s in samples if s["t"] >= o["t_up"] + OUTAGE_GRACE]
        if before and after:
            steps.append({"service": o["service"], "before_mib": before[-1],
                          "after_mib": after[0], "step_mib": round(after[0] - before[-1], 2)})
    fd_slope = least_squares([(s["t"] / 60, s["fds"]) for s in fit])
    return {
        "first_mib": samples[0]["rss_mib"] if samples else None,
        "fit_start_mib": fit[0]["rss_mib"] if fit else None,
        "end_mib": samples[-1]["rss_mib"] if samples else None,
        "max_mib": max((s["rss_mib"] for s in samples), default=None),
        "fit_window_secs": [fit[0]["t"], fit[-1]["t"]] if fit else None,
        "slope_mib_per_min": None if slope is None else round(slope, 4),
        "quiet_window_secs": [quiet[0]["t"], quiet[-1]["t"]] if len(quiet) > 1 else None,
        "quiet_slope_mib_per_min": None if quiet_slope is None else round(quiet_slope, 4),
        "outage_steps": steps,
        "fds_first_end": [samples[0]["fds"], samples[-1]["fds"]] if samples else None,
        "fds_slope_per_min": None if fd_slope is None else round(fd_slope, 3),
        "threads_first_end": [samples[0]["threads"], samples[-1]["threads"]] if samples else None,
        "cpu_secs": round(samples[-1]["cpu_secs"] - samples[0]["cpu_secs"], 2) if samples else None,
    }


def verdict(out: dict[str, Any]) -> list[str]:
    problems = []
    if out["runs"]["doubles"]:
        problems.append(f"{out['runs']['doubles']} runs enqueued twice")
    if out["leftovers"]["enabled_without_member"]:
        problems.append(f"{len(out['leftovers']['enabled_without_member'])} enabled schedules "
                        "without a member")
    if out["leftovers"]["last_enqueued_of_deleted_past_grace"]:
        problems.append(f"{out['leftovers']['last_enqueued_of_deleted_past_grace']} last runs "
                        "of deleted schedules kept past the store's grace")
    log = out["log"]
    bad = log["error_outside"] + log["critical_outside"] + log["traceback_outside"]
    if bad:
        problems.append(f"{bad} error/critical/traceback lines outside the outage windows")
    for o in out["outages"]:
        if o["service"] == "redis" and (o["replanned_secs"] is None
                                        or o["replanned_secs"] > REPLAN_LIMIT):
            problems.append(f"Redis restart at t={o['t_down']} s: replanned in "
                            f"{o['replanned_secs']} s")
    slope = out["rss"]["quiet_slope_mib_per_min"]
    if slope is not None and slope > QUIET_SLOPE_LIMIT:
        problems.append(f"RSS grows {slope} MiB/min after the last restart")
    status = out.get("status")
    if isinstance(status, dict):
        for name, svc in status.get("services", {}).items():
            if svc.get("state") != "ok":
                problems.append(f"status still shows {name} as {svc.get('state')}")
        if status.get("last_run_ahead"):
            problems.append(f"status lists last_run_ahead: {status['last_run_ahead']}")
    return problems


def print_table(out: dict[str, Any]) -> None:
    rss, runs, left, log = out["rss"], out["runs"], out["leftovers"], out["log"]
    rows = [
        ("soak minutes", out["minutes"]),
        ("RSS first / fit start / end / max (MiB)",
         f"{rss['first_mib']} / {rss['fit_start_mib']} / {rss['end_mib']} / {rss['max_mib']}"),
        ("RSS slope, last 80 % (MiB/min)", rss["slope_mib_per_min"]),
        ("RSS slope after the last outage (MiB/min)",
         f"{rss['quiet_slope_mib_per_min']} over {rss['quiet_window_secs']} s"),
        ("RSS step across each restart (MiB)",
         ", ".join(f"{x['service']} {x['step_mib']:+}" for x in rss["outage_steps"])),
        ("fds first/end, slope per min", f"{rss['fds_first_end']}, {rss['fds_slope_per_min']}"),
        ("threads first/end", rss["threads_first_end"]),
        ("jobs read / distinct runs", f"{runs['jobs_read']} / {runs['distinct_runs']}"),
        ("runs enqueued twice", runs["doubles"]),
        ("core missing seconds in / outside outages",
         (f"{runs['core_missing_seconds_in_outages']} / {runs['core_missing_seconds_outside']}"
          f" (by outage: {runs['core_missing_seconds_by_outage']})")),
        ("lateness outside outages p50/p99/max (s)",
         "{p50} / {p99} / {max}".format(**runs["lateness_outside_outages_secs"])),
        ("restarts (service: t_down -> t_up, replanned)", "; ".join(
            f"{o['service']}: {o['t_down']}->{o['t_up']}"
            + (f", {o['replanned_secs']} s" if o["service"] == "redis" else "")
            for o in out["outages"])),
        ("churn rounds (failed) / inserted / deleted",
         (f"{out['churn']['rounds']} ({out['churn']['failed_rounds']}) / "
          f"{out['churn']['inserted']} / {out['churn']['deleted']}")),
        ("ERROR / CRITICAL / Traceback outside outages",
         f"{log['error_outside']} / {log['critical_outside']} / {log['traceback_outside']}"),
        ("ERROR / CRITICAL / Traceback in outages",
         f"{log['error_in_outage']} / {log['critical_in_outage']} / {log['traceback_in_outage']}"),
        ("members of deleted (overdue) / of disabled",
         (f"{left['members_of_deleted']} ({left['members_of_deleted_overdue']}) / "
          f"{left['members_of_disabled']}")),
        ("enabled without member", len(left["enabled_without_member"])),
        ("last_enqueued of deleted (past grace) / total",
         f"{left['last_enqueued_of_deleted']} ({left['last_enqueued_of_deleted_past_grace']})"
         f" / {left['last_enqueued_total']}"),
        ("member index of deleted", left["member_index_of_deleted"]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for problem in out["problems"]:
        print(f"PROBLEM: {problem}")
    for line in log["outside_lines"][:10]:
        print(f"  log: {line[:200]}")
