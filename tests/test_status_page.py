"""The status page's reader and rendering, with canned script replies: what
it asks Redis, and what it shows when Redis is down or a read fails."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from btu_twisted.ops.status_page import (
    DEFAULT_LIMIT,
    LATEST_RUNS,
    MAX_LIMIT,
    PAUSED_LIST,
    SOONEST,
    ScheduleReader,
    StatusPage,
    _duration,
    limit_of,
)
from btu_twisted.store.history import ENQUEUED, encode_run
from btu_twisted.store.keys import Keys


class Scripts:
    """Answers SOONEST and LATEST_RUNS as Redis would; records every call."""

    def __init__(self, members: list[tuple[str, int]], heads: dict[str, str],
                 total: int | None = None, error: Exception | None = None) -> None:
        self.keys = Keys("p:")
        self.members = members
        self.heads = heads
        self.total = len(members) if total is None else total
        self.error = error
        self.calls: list[tuple[str, list[str], list[object]]] = []
        self.paused: dict[str, int] = {}

    async def evaluate(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        self.calls.append((script, list(keys), list(args)))
        if self.error is not None:
            raise self.error
        if script == SOONEST:
            flat: list[object] = []
            for member, score in self.members[: int(args[0])]:  # type: ignore[call-overload]
                flat += [member, str(score)]
            return [self.total, json.dumps(flat)]
        if script == PAUSED_LIST:
            flat = []
            for name, since in sorted(self.paused.items()):
                flat += [name, str(since)]
            return [len(self.paused), json.dumps(flat) if flat else "[]"]
        assert script == LATEST_RUNS
        return json.dumps([self.heads.get(key, "") for key in keys])


def status(redis: str = "ok") -> dict[str, Any]:
    return {
        "version": "9.9", "name": "site & co", "environment": None, "now": "2026-11-28T00:00:00Z",
        "uptime_secs": 3725.5, "members": 2, "enqueued": 5, "skipped": 1, "fifo_length": 0,
        "services": {
            "mariadb": {"state": "ok", "down_since": None, "last_error": None},
            "redis": {"state": redis, "down_since": None if redis == "ok" else
                      "2026-11-27T23:59:00Z", "last_error": None if redis == "ok" else
                      "no reply within 5 s"},
        },
    }


async def get(page: StatusPage, args: dict[bytes, list[bytes]] | None = None) -> str:
    request = DummyRequest([b""])
    request.args = args or {}
    finished = request.notifyFinish()
    assert page.render_GET(request) is NOT_DONE_YET
    await finished
    assert request.responseCode in (None, 200), request.responseCode
    return b"".join(request.written).decode("utf-8")


class ReaderTests(unittest.TestCase):
    async def test_two_scripts_with_the_shown_schedules_history_keys(self) -> None:
        """One call for the soonest members, one for the heads of exactly the
        shown schedules' history lists; an unreadable member gets no key."""
        scripts = Scripts(
            [("A|100", 100), ("odd", 150), ("B|x|200", 200)],
            {"p:history:A": encode_run(90, "1970-01-01T00:01:31.5Z", "j", ENQUEUED),
             "p:history:B|x": "not an entry"},
        )
        soonest = await ScheduleReader(scripts).read(5)
        self.assertEqual(scripts.calls[0], (SOONEST, ["p:task_execution_times"], [5]))
        self.assertEqual(scripts.calls[1], (LATEST_RUNS, ["p:history:A", "p:history:B|x"], []))
        self.assertEqual(soonest.total, 3)
        self.assertEqual([(line.name, line.next_run) for line in soonest.lines],
                         [("A", 100), ("odd", 150), ("B|x", 200)])
        last = soonest.lines[0].last
        assert last is not None
        self.assertEqual((last.scheduled, last.job_id), (90, "j"))
        self.assertIsNone(soonest.lines[1].last)
        self.assertIsNone(soonest.lines[2].last)

    async def test_no_members_no_second_call(self) -> None:
        """An empty sorted set costs no history call: the soonest members, then the paused."""
        scripts = Scripts([], {})
        soonest = await ScheduleReader(scripts).read(DEFAULT_LIMIT)
        self.assertEqual((soonest.total, soonest.lines), (0, []))
        self.assertEqual([call[0] for call in scripts.calls], [SOONEST, PAUSED_LIST])
        self.assertEqual(scripts.calls[1][1:], (["p:paused"], [DEFAULT_LIMIT]))
        self.assertEqual(soonest.paused.total, 0)

    async def test_paused_schedules_read(self) -> None:
        """The paused schedules come with the soonest ones, since when each was paused."""
        scripts = Scripts([("A|100", 100)], {})
        scripts.paused = {"B": 50, "C": 60}
        soonest = await ScheduleReader(scripts).read(5)
        self.assertEqual((soonest.paused.total, soonest.paused.since), (2, {"B": 50, "C": 60}))


class PageTests(unittest.TestCase):
    async def test_rows_lateness_and_escaping(self) -> None:
        """A row per member with the lateness of its last run; names escaped."""
        scripts = Scripts(
            [("<i>&|100", 100)],
            {"p:history:<i>&": encode_run(40, "1970-01-01T00:00:42.25Z", None, ENQUEUED)},
            total=7,
        )
        html = await get(StatusPage(Clock(), status, ScheduleReader(scripts)))
        self.assertIn("<td class=\"name\">&lt;i&gt;&amp;</td>", html)
        self.assertIn("<td class=\"lateness\">2.250 s</td>", html)
        self.assertIn("site &amp; co", html)
        self.assertIn("1 h 2 min", html)
        self.assertIn("the 1 soonest of 7 planned schedules (list truncated)", html)

    async def test_paused_table(self) -> None:
        """Paused schedules get a table of their own, escaped, with since when;
        none paused, no table."""
        scripts = Scripts([("A|100", 100)], {})
        html = await get(StatusPage(Clock(), status, ScheduleReader(scripts)))
        self.assertNotIn("id=\"paused\"", html)
        scripts.paused = {"<b>": 0}
        clock = Clock()
        clock.advance(3600)
        html = await get(StatusPage(clock, status, ScheduleReader(scripts)))
        self.assertIn("id=\"paused\"", html)
        self.assertIn("<td class=\"name\">&lt;b&gt;</td>", html)
        self.assertIn("<td class=\"since\">1970-01-01T00:00:00Z</td>", html)
        self.assertIn("<td class=\"for\">1 h 0 min</td>", html)
        self.assertIn("1 paused schedules", html)

    async def test_redis_known_down_reads_nothing(self) -> None:
        """While Redis is down the page does not wait on it: no script call,
        the dependency shown down, a note instead of the table."""
        scripts = Scripts([("A|1", 1)], {})
        page = StatusPage(Clock(), lambda: status("down"), ScheduleReader(scripts))
        html = await get(page)
        self.assertEqual(scripts.calls, [])
        self.assertIn("<tr class=\"dependency down\"><th>redis</th>", html)
        self.assertIn("2026-11-27T23:59:00Z", html)
        self.assertIn("id=\"note\"", html)
        self.assertNotIn("id=\"schedules\"", html)

    async def test_failed_read_is_a_note(self) -> None:
        """A read that fails while Redis answers (a script error) is said in
        the note, escaped; the page is still a page."""
        scripts = Scripts([("A|1", 1)], {}, error=ValueError("bad <reply>"))
        html = await get(StatusPage(Clock(), status, ScheduleReader(scripts)))
        self.assertIn("could not be read from Redis: ValueError: bad &lt;reply&gt;", html)
        self.assertNotIn("id=\"schedules\"", html)

    async def test_limit_is_passed_to_redis(self) -> None:
        """``?limit=`` reaches the script, capped at MAX_LIMIT."""
        scripts = Scripts([], {})
        page = StatusPage(Clock(), status, ScheduleReader(scripts))
        await get(page, {b"limit": [b"99999"]})
        self.assertEqual(scripts.calls[0][2], [MAX_LIMIT])


class HelperTests(unittest.TestCase):
    def test_limit_of(self) -> None:
        """Absent or not a number: the default; otherwise clamped to 1..MAX_LIMIT."""
        self.assertEqual(limit_of(None), DEFAULT_LIMIT)
        self.assertEqual(limit_of([b"x"]), DEFAULT_LIMIT)
        self.assertEqual(limit_of([b"0"]), 1)
        self.assertEqual(limit_of([b"20"]), 20)
        self.assertEqual(limit_of([b"5000"]), MAX_LIMIT)

    def test_duration(self) -> None:
        """The two largest units, a zero one kept when it is the second."""
        self.assertEqual(_duration(7.9), "7 s")
        self.assertEqual(_duration(3605), "1 h 0 min")
        self.assertEqual(_duration(-90061), "-1 d 1 h")
        self.assertEqual(_duration(None), "\u2014")
