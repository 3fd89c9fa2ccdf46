"""The read-only HTML status page at ``/`` of ``metrics_port``.

For a person, where ``/metrics`` is for Prometheus: the daemon's state (the
same figures as the ``status`` request) and the soonest schedules with their
next run and how their last run went.  Plain HTML and a few lines of CSS, no
JavaScript at all (the Content-Security-Policy forbids any), and every value
escaped: schedule names and error texts come from whoever may edit schedules.

It must stay cheap with 100,000 schedules and never hold up the reactor, so a
page costs three read-only script calls whatever the number of schedules: the
``limit`` soonest members (one ZRANGE) with the total, then the newest history
entry of each shown schedule (one LINDEX each, in one call).  With Redis down
the page still answers, at once, saying so instead of listing schedules.
Paused schedules (``btu pause``) have no run planned: a third call lists them
(one HSCAN page) in a table of their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from btu_twisted.health import DOWN, OK
from btu_twisted.records import iso_utc
from btu_twisted.seams import ScriptRunner
from btu_twisted.store.history import Run, parse_run
from btu_twisted.store.pauses import Paused, parse_paused
from btu_twisted.store.schedule_store import split_member
from btu_twisted.store.scripts import LATEST_RUNS, PAUSED_LIST, SOONEST

__all__ = [
    "DEFAULT_LIMIT", "MAX_LIMIT", "ScheduleLine", "ScheduleReader", "SitesPage", "Soonest",
    "StatusPage",
]

#: Schedules listed unless ``?limit=`` says otherwise, and the most it may ask for.
DEFAULT_LIMIT = 200
MAX_LIMIT = 1000

NOTHING = "\u2014"  # an em dash: no value

# SOONEST and LATEST_RUNS: lua/soonest.lua, lua/latest_runs.lua.


class _Response(Protocol):
    """What the page uses of twisted.web's Request, typed: Twisted leaves
    these methods unannotated, and strict mypy refuses untyped calls."""

    def setHeader(self, name: bytes, value: bytes) -> object: ...

    def setResponseCode(self, code: int) -> object: ...

    def write(self, data: bytes) -> object: ...

    def finish(self) -> object: ...


@dataclass(frozen=True)
class ScheduleLine:
    """One row: a member of the sorted set and the newest run of its schedule."""

    name: str  # the schedule, or the whole member when it cannot be read
    next_run: int
    last: Run | None


@dataclass(frozen=True)
class Soonest:
    total: int
    lines: list[ScheduleLine]
    paused: Paused = Paused()


class ScheduleReader:
    """The soonest schedules and their last runs, in two script calls."""

    def __init__(self, store: ScriptRunner) -> None:
        self._store = store

    async def read(self, limit: int) -> Soonest:
        keys = self._store.keys
        reply = await self._store.evaluate(SOONEST, [keys.schedule_set], [limit])
        flat = json.loads(reply[1])
        members = [(str(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
        names = []
        for member, _ in members:
            parts = split_member(member)
            names.append(parts[0] if parts is not None else None)
        wanted = [name for name in names if name is not None]
        heads: list[str] = []
        if wanted:
            heads = json.loads(await self._store.evaluate(
                LATEST_RUNS, [keys.history(name) for name in wanted], []))
        latest = iter(heads)
        lines = []
        for (member, when), name in zip(members, names, strict=True):
            if name is None:
                lines.append(ScheduleLine(member, when, None))
            else:
                head = next(latest, "")
                lines.append(ScheduleLine(name, when, parse_run(head) if head else None))
        paused = parse_paused(list(await self._store.evaluate(
            PAUSED_LIST, [keys.paused], [limit])))
        return Soonest(int(reply[0]), lines, paused)


class StatusPage(Resource):
    """``GET /``: the page, rendered once both reads are done (or have failed)."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        clock: Any,
        status: Callable[[], Mapping[str, Any]],
        reader: ScheduleReader,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted: Resource is unannotated
        self._clock = clock
        self._status = status
        self._reader = reader

    def render_GET(self, request: Request) -> Any:
        response: _Response = request
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        d = Deferred.fromCoroutine(self._page(limit_of(request.args.get(b"limit"))))

        def send(page: bytes) -> None:
            if gone:
                return  # the client left
            response.setHeader(b"content-type", b"text/html; charset=utf-8")
            response.setHeader(b"cache-control", b"no-store")
            response.setHeader(b"x-content-type-options", b"nosniff")
            response.setHeader(
                b"content-security-policy",
                b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            )
            response.write(page)
            response.finish()

        def failed(failure: Any) -> None:
            self.log.failure("rendering the status page failed", failure)
            if not gone:
                response.setResponseCode(500)
                response.setHeader(b"content-type", b"text/plain; charset=utf-8")
                response.write(b"the status page failed; the daemon's log says why\n")
                response.finish()

        d.addCallbacks(send, failed)
        return NOT_DONE_YET

    async def _page(self, limit: int) -> bytes:
        status, soonest, problem = await read_section(self._status, self._reader, limit)
        return render(status, soonest, limit, problem, self._clock.seconds()).encode("utf-8")


Section = tuple[Mapping[str, Any], "Soonest | None", "str | None"]


async def read_section(
    status: Callable[[], Mapping[str, Any]], reader: ScheduleReader, limit: int
) -> Section:
    """One daemon's (or site's) status, its soonest schedules, and what kept them unread."""
    soonest: Soonest | None = None
    problem = None
    if _state(status(), "redis") != DOWN:
        try:
            soonest = await reader.read(limit)
        except Exception as e:
            problem = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    # After the read: a failed one has turned Redis "down" here, with its reason.
    now_status = status()
    if _state(now_status, "redis") == DOWN:
        problem = "Redis is down: the schedules cannot be read until it is back."
    elif problem is not None:
        # Redis answered, with an error (an outage is logged by its Dependency).
        StatusPage.log.warn("status page: the schedules could not be read: {problem}",
                            problem=problem)
        problem = f"The schedules could not be read from Redis: {problem}"
    return now_status, soonest, problem


class SitesPage(StatusPage):
    """``GET /`` of a daemon serving several sites: one section per site, each
    read as the one-site page reads its daemon (all at once, not one after another)."""

    def __init__(
        self,
        clock: Any,
        sites: Mapping[str, tuple[Callable[[], Mapping[str, Any]], ScheduleReader]],
        title: str = "btu",
    ) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self._clock = clock
        self._sites = dict(sites)
        self._title = title

    def show(self, sites: Mapping[str, tuple[Callable[[], Mapping[str, Any]], ScheduleReader]]
             ) -> None:
        """Sections for these sites from the next request on (sites reloaded)."""
        self._sites = dict(sites)

    async def _page(self, limit: int) -> bytes:
        reads = [Deferred.fromCoroutine(read_section(status, reader, limit))
                 for status, reader in self._sites.values()]
        sections = {site: await read for site, read in zip(self._sites, reads, strict=True)}
        return render_sites(self._title, sections, limit, self._clock.seconds()).encode("utf-8")


def limit_of(values: Sequence[bytes] | None) -> int:
    """``?limit=``, between 1 and MAX_LIMIT; the default when absent or not a number."""
    try:
        wanted = int(values[0]) if values else DEFAULT_LIMIT
    except ValueError:
        wanted = DEFAULT_LIMIT
    return max(1, min(MAX_LIMIT, wanted))


def render(
    status: Mapping[str, Any], soonest: Soonest | None, limit: int, problem: str | None,
    now: float,
) -> str:
    """The whole page; every value passes through :func:`_e`."""
    name = status.get("name") or "btu"
    environment = status.get("environment")
    title = f"{name} ({environment})" if environment else str(name)
    return (_head(title) + f"<h1>{_e(title)}</h1>"
            + _section(status, soonest, limit, problem, now) + "</body></html>\n")


def render_sites(title: str, sections: Mapping[str, Section], limit: int, now: float) -> str:
    """Several sites' sections under one heading, with a table of contents;
    element ids carry the section's number (site names are not valid ids)."""
    contents = "".join(f"<li><a href=\"#site-{i}\">{_e(site)}</a></li>"
                       for i, site in enumerate(sections, 1))
    parts = [_head(title), f"<h1>{_e(title)}</h1><ul id=\"sites\">{contents}</ul>"]
    for i, (site, (status, soonest, problem)) in enumerate(sections.items(), 1):
        parts.append(f"<section id=\"site-{i}\" class=\"site\"><h2>{_e(site)}</h2>")
        parts.append(_section(status, soonest, limit, problem, now, f"-{i}", "h3"))
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _head(title: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)} \u2014 btu_twisted</title>"
            f"<style>{_CSS}</style></head><body>")


def _section(
    status: Mapping[str, Any], soonest: Soonest | None, limit: int, problem: str | None,
    now: float, suffix: str = "", heading: str = "h2",
) -> str:
    parts = [
        f"<dl id=\"daemon{suffix}\">",
        _item("version", status.get("version")),
        _item("now", status.get("now")),
        _item("started", status.get("started_at")),
        _item("uptime", _duration(status.get("uptime_secs"))),
        _item("schedules in Redis (last seen)", status.get("members")),
        _item("enqueued", status.get("enqueued")),
        _item("skipped", status.get("skipped")),
        _item("waiting to be planned", status.get("fifo_length")),
        "</dl>",
        _unwell(status.get("unwell_schedules") or [], suffix, heading),
        _dependencies(status.get("services") or {}, suffix, heading),
    ]
    if problem is not None or soonest is None:
        parts.append(f"<p id=\"note{suffix}\" class=\"note\">"
                     f"{_e(problem or 'No schedules read.')}</p>")
    else:
        parts.append(_schedules(soonest, limit, now, suffix, heading))
    return "".join(parts)


def _unwell(schedules: Sequence[Mapping[str, Any]], suffix: str, heading: str) -> str:
    """The schedules that need a person, worst first, with their last error (btu health)."""
    if not schedules:
        return ""
    rows = "".join(
        f"<tr class=\"unwell {_e(s.get('level'))}\"><td class=\"name\">{_e(s.get('name'))}</td>"
        f"<td class=\"state\">{_e(s.get('state'))}</td><td>{_e(s.get('reason') or '')}</td>"
        f"<td class=\"error\">{_e(s.get('last_error') or NOTHING)}</td></tr>"
        for s in schedules)
    return (f"<{heading}>Unwell schedules</{heading}><table id=\"unwell{suffix}\"><thead><tr>"
            "<th>schedule</th><th>state</th><th>why</th><th>last error</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _dependencies(services: Mapping[str, Any], suffix: str = "", heading: str = "h2") -> str:
    rows = []
    for service, snapshot in services.items():
        state = str(snapshot.get("state"))
        since = snapshot.get("down_since") or snapshot.get("refusing_since")
        error = snapshot.get("last_error")
        shown = "up" if state == OK else state
        rows.append(
            f"<tr class=\"dependency {_e(state)}\"><th>{_e(service)}</th>"
            f"<td class=\"state\">{_e(shown)}</td><td>{_e(since or NOTHING)}</td>"
            f"<td>{_e(error or '')}</td></tr>"
        )
    return (
        f"<{heading}>Dependencies</{heading}><table id=\"dependencies{suffix}\"><thead><tr>"
        "<th>service</th>"
        "<th>state</th><th>since</th><th>last error</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )


def _schedules(soonest: Soonest, limit: int, now: float, suffix: str = "",
               heading: str = "h2") -> str:
    shown = len(soonest.lines)
    if soonest.total > shown:
        more = (f" <a href=\"?limit={MAX_LIMIT}\">show up to {MAX_LIMIT}</a>"
                if limit < MAX_LIMIT else "")
        summary = (f"the {shown} soonest of {soonest.total} planned schedules "
                   f"(list truncated).{more}")
    else:
        summary = f"all {soonest.total} planned schedules."
    rows = []
    for line in soonest.lines:
        last = line.last
        rows.append(
            "<tr class=\"schedule\">"
            f"<td class=\"name\">{_e(line.name)}</td>"
            f"<td class=\"next\">{_e(iso_utc(line.next_run))}</td>"
            f"<td class=\"in\">{_e(_duration(line.next_run - now))}</td>"
            f"<td class=\"last\">{_e(iso_utc(last.scheduled) if last else NOTHING)}</td>"
            f"<td class=\"outcome\">{_e(last.outcome if last else NOTHING)}</td>"
            f"<td class=\"lateness\">{_e(_lateness(last) if last else NOTHING)}</td>"
            f"<td class=\"job\">{_e((last.job_id if last else None) or NOTHING)}</td>"
            "</tr>"
        )
    return (
        f"<{heading}>Schedules</{heading}><p id=\"summary{suffix}\">Showing {summary}</p>"
        f"<table id=\"schedules{suffix}\"><thead><tr><th>schedule</th><th>next run (UTC)</th>"
        "<th>in</th><th>last run (scheduled, UTC)</th><th>outcome</th><th>lateness</th>"
        "<th>job id</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        + _paused(soonest.paused, now, suffix, heading)
    )


def _paused(paused: Paused, now: float, suffix: str, heading: str) -> str:
    """The paused schedules (no run planned until ``btu resume``), or nothing."""
    if not paused.total:
        return ""
    rows = "".join(
        f"<tr class=\"paused\"><td class=\"name\">{_e(name)}</td>"
        f"<td class=\"since\">{_e(iso_utc(since))}</td>"
        f"<td class=\"for\">{_e(_duration(now - since))}</td></tr>"
        for name, since in sorted(paused.since.items()))
    more = "" if paused.total <= len(paused.since) else f" (showing {len(paused.since)})"
    return (
        f"<{heading}>Paused</{heading}><p id=\"paused-summary{suffix}\">{paused.total} paused "
        f"schedules{more}: no run until 'btu resume'.</p><table id=\"paused{suffix}\"><thead>"
        "<tr><th>schedule</th><th>paused since (UTC)</th><th>for</th></tr></thead><tbody>"
        + rows + "</tbody></table>"
    )


def _item(label: str, value: object) -> str:
    return f"<dt>{_e(label)}</dt><dd>{_e(NOTHING if value is None else value)}</dd>"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _state(status: Mapping[str, Any], service: str) -> str | None:
    snapshot = (status.get("services") or {}).get(service) or {}
    state = snapshot.get("state")
    return None if state is None else str(state)


def _lateness(run: Run) -> str:
    """How long after its scheduled time the run was decided, or a dash."""
    try:
        decided = datetime.fromisoformat(run.decided_at)
    except ValueError:
        return NOTHING
    if decided.tzinfo is None:
        decided = decided.replace(tzinfo=UTC)
    return f"{decided.timestamp() - run.scheduled:.3f} s"


def _duration(secs: object) -> str:
    """``3 d 4 h``, ``5 min 6 s``, ``7 s``: the two largest units, for people."""
    if not isinstance(secs, int | float):
        return NOTHING
    sign, left = ("-" if secs < 0 else ""), int(abs(secs))
    units = [("d", 86400), ("h", 3600), ("min", 60), ("s", 1)]
    parts: list[str] = []
    for unit, size in units:
        if parts or left >= size or unit == "s":
            parts.append(f"{left // size} {unit}")
            left %= size
        if len(parts) == 2:
            break
    return sign + " ".join(parts)


_CSS = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse}td,th{padding:.2em .6em;text-align:left;"
    "border-bottom:1px solid #ddd}dl{display:grid;grid-template-columns:max-content auto;"
    "gap:.1em 1em}dt{color:#666}dd{margin:0}.down td.state,.refusing td.state{color:#b00;"
    "font-weight:bold}.critical td.state{color:#b00;font-weight:bold}.warning td.state"
    "{color:#a60;font-weight:bold}.ok td.state{color:#070}.note{color:#b00;font-weight:bold}"
    "td.next,td.last,td.lateness{font-variant-numeric:tabular-nums}"
)
