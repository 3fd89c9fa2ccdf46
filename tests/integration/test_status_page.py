"""The status page at ``/`` of ``metrics_port``, from a running daemon: over
HTTP (rows, escaping, ``?limit=``, Redis down) and in a real headless browser.

The daemon runs on a redis-server of its own and a fresh MariaDB database;
it plans the schedules itself, the history entries are written as CLAIM
writes them (``history.encode_run``).  Schedules run in years far ahead
(7-field crons), so their order on the page is known and nothing is due.
"""

from __future__ import annotations

import calendar
import os
import re
import shutil
import tempfile
import time
from html.parser import HTMLParser
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from btu_twisted.store.history import ENQUEUED, SKIPPED_OVERLAP, encode_run
from btu_twisted.store.keys import Keys
from btu_twisted.daemon.service import BtuService
from tests.integration.daemon import make_service, wait_for
from tests.integration.proxy import TcpProxy
from tests.integration.redis_servers import free_port, server_directory, start_server
from tests.integration.support import TestDatabase, config_values

EVIL = '<script>alert("x")</script> & co'
EVIL_ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co"
# 2031-01-01, 2032-01-01, 2033-01-01 (UTC): the order the page lists them in.
YEARS = {"TS-1": 2031, EVIL: 2032, "TS-3": 2033}
KEYS = Keys()
BROWSER_TIMEOUT = 30.0


def cron_in(year: int) -> str:
    return f"0 0 0 1 1 * {year}"


def unix(year: int) -> int:
    return calendar.timegm((year, 1, 1, 0, 0, 0))


class Rows(HTMLParser):
    """The cells' texts of each ``<tr class="schedule">``, and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.tags: set[str] = set()
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "tr" and ("class", "schedule") in attrs:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


class Output(ProcessProtocol):
    """A child's output, and its exit code once it has ended."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(getattr(reason.value, "exitCode", None))


def parse(html: str) -> Rows:
    rows = Rows()
    rows.feed(html)
    return rows


class StatusPageTests(unittest.TestCase):
    async def daemon(self, extra: int = 0) -> tuple[BtuService, Any, TcpProxy]:
        """A started daemon planning TS-1, EVIL, TS-3 (and ``extra`` more, in
        2040), its private Redis behind a proxy that can cut it off."""
        server = await start_server(self, server_directory(self), "page")
        proxy = TcpProxy(reactor, server.port)
        await proxy.start()
        self.addCleanup(proxy.stop)
        db = TestDatabase(load_samples=False)
        self.addCleanup(db.drop)
        db.set_zone("UTC")
        db.add_task("BTU-1", "tests.jobfuncs.record")
        rows = [(name, "BTU-1", cron_in(year), True, "default", None)
                for name, year in YEARS.items()]
        rows += [(f"X-{i:04d}", "BTU-1", cron_in(2040), True, "default", None)
                 for i in range(extra)]
        db.add_schedules(rows)
        service, fatal = make_service(config_values(
            db.name, rq_port=proxy.port, rq_database=0, metrics_port=free_port(),
            name="page test", environment_name="<staging>",
        ))
        await service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(fatal, [])
        client = server.client(decode_responses=True)
        self.addCleanup(client.close)
        await wait_for(lambda: client.zcard(KEYS.schedule_set) == len(rows), timeout=8)
        return service, client, proxy

    async def get(self, service: BtuService, query: str = "") -> tuple[int, str]:
        assert service.metrics_service is not None
        response = await treq.get(
            f"http://127.0.0.1:{service.metrics_service.port}/{query}", persistent=False
        )
        return response.code, await response.text("utf-8")

    async def test_rows_last_runs_and_escaping(self) -> None:
        """Each planned schedule is a row, soonest first, with the newest run
        of its history; a name with markup in it comes out as text."""
        service, client, _ = await self.daemon()
        ts1 = unix(2021)
        client.lpush(KEYS.history("TS-1"),
                     encode_run(ts1 - 60, "2020-12-31T23:59:00.5Z", "old-job", ENQUEUED),
                     encode_run(ts1, "2021-01-01T00:00:01.250000Z", "job-1&2", ENQUEUED))
        client.lpush(KEYS.history(EVIL),
                     encode_run(ts1, "2021-01-01T00:00:00Z", None, SKIPPED_OVERLAP))
        # TS-3: no history at all.

        code, html = await self.get(service)
        self.assertEqual(code, 200)
        page = parse(html)
        self.assertEqual(
            [(r[0], r[1], r[3], r[4], r[5], r[6]) for r in page.rows],
            [
                ("TS-1", "2031-01-01T00:00:00Z", "2021-01-01T00:00:00Z", ENQUEUED,
                 "1.250 s", "job-1&2"),
                (EVIL, "2032-01-01T00:00:00Z", "2021-01-01T00:00:00Z", SKIPPED_OVERLAP,
                 "0.000 s", "\u2014"),
                ("TS-3", "2033-01-01T00:00:00Z", "\u2014", "\u2014", "\u2014", "\u2014"),
            ],
        )
        self.assertIn(EVIL_ESCAPED, html)
        self.assertIn("job-1&amp;2", html)
        self.assertNotIn("<script", html)
        self.assertNotIn("<staging>", html)
        self.assertIn("&lt;staging&gt;", html)
        self.assertIn("all 3 planned schedules", html)
        self.assertIn('<tr class="dependency ok"><th>redis</th><td class="state">up</td>', html)

    async def test_limit(self) -> None:
        """``?limit=`` shows that many soonest schedules and says the list is
        cut; a larger one than MAX_LIMIT is capped, a bad one is the default."""
        service, _, _ = await self.daemon(extra=1000)
        code, html = await self.get(service, "?limit=2")
        self.assertEqual(code, 200)
        self.assertEqual([r[0] for r in parse(html).rows], ["TS-1", EVIL])
        self.assertIn("the 2 soonest of 1003 planned schedules (list truncated)", html)
        _, html = await self.get(service, "?limit=5000")
        self.assertEqual(len(parse(html).rows), 1000)
        self.assertIn("the 1000 soonest of 1003", html)
        _, html = await self.get(service, "?limit=lots")
        self.assertEqual(len(parse(html).rows), 200)
        _, html = await self.get(service, "metrics")
        self.assertIn("btu_dependency_up", html)  # /metrics is still Prometheus text

    async def test_redis_down(self) -> None:
        """With Redis cut off the page still answers 200, showing Redis down
        and a note where the table was; once Redis is known down, at once."""
        service, _, proxy = await self.daemon()
        await proxy.pause("refuse")
        self.addCleanup(proxy.resume)  # so that the daemon stops without waiting on Redis
        code, html = await self.get(service)
        self.assertEqual(code, 200)
        self.assertIn('<tr class="dependency down"><th>redis</th><td class="state">down</td>',
                      html)
        self.assertIn('id="note"', html)
        self.assertIn("Redis is down", html)
        self.assertEqual(parse(html).rows, [])
        self.assertNotIn('id="schedules"', html)
        started = time.monotonic()
        code, _ = await self.get(service)
        self.assertEqual(code, 200)
        self.assertLess(time.monotonic() - started, 1.0)

    async def test_in_a_headless_browser(self) -> None:
        """Debian's chromium renders the page: the DOM it builds has the rows,
        the markup-laden name as text, and no script element."""
        browser = shutil.which("chromium")
        if browser is None:
            raise unittest.SkipTest(
                "chromium is not installed and scripts/test.sh could not install it "
                "(apt-get install -y chromium)"
            )
        service, _, _ = await self.daemon()
        assert service.metrics_service is not None
        profile = tempfile.mkdtemp(prefix="btu-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        url = f"http://127.0.0.1:{service.metrics_service.port}/"
        browsing = Output()
        process = reactor.spawnProcess(browsing, browser, [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", url,
        ], env=dict(os.environ))
        deadline = reactor.callLater(BROWSER_TIMEOUT, process.signalProcess, "KILL")
        status = await browsing.ended
        if deadline.active():
            deadline.cancel()
        self.assertEqual(status, 0, b"".join(browsing.err).decode(errors="replace")[-2000:])
        dom = b"".join(browsing.out).decode("utf-8")
        page = parse(dom)
        self.assertEqual([r[0] for r in page.rows], ["TS-1", EVIL, "TS-3"])
        self.assertNotIn("script", page.tags)
        self.assertIsNotNone(re.search(r"<table id=\"schedules\">", dom))
