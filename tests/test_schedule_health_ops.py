"""Where schedule health shows: /metrics (bounded series), the webhook (retried
with backoff on a task.Clock), the status page's unwell table, ``btu health``."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from btu_twisted.cli import common
from btu_twisted.cli.health import cmd_health
from btu_twisted.ops.health_metrics import ScheduleSource, collector_of
from btu_twisted.ops.health_webhook import MAX_TRIES, HealthWebhook, message
from btu_twisted.ops.status_page import render
from btu_twisted.store.health_record import (
    CRITICAL,
    FAILING,
    OK,
    WARNING,
    Health,
    HealthRecord,
    PendingJob,
    encode,
)
from btu_twisted.store.keys import Keys

BAD = HealthRecord(last_enqueued=10, last_failure=11, consecutive_failures=3,
                   last_error="ValueError: <boom>")
GOOD = HealthRecord(last_enqueued=10, last_success=12)


class MetricsTests(SynchronousTestCase):
    def scrape(self, site: str | None, limit: int, n: int = 5) -> str:
        registry = CollectorRegistry()
        records = {f"s{i}": GOOD for i in range(n)} | {"z-bad": BAD}
        states = {name: Health(OK, 0) for name in records} | {
            "z-bad": Health(FAILING, CRITICAL)}
        collector_of(registry).sources.append(
            ScheduleSource(site, lambda: records, lambda: states, limit))
        self.assertIs(collector_of(registry), collector_of(registry))
        return generate_latest(registry).decode()

    def test_series_per_schedule(self) -> None:
        text = self.scrape(None, 1000)
        self.assertIn('btu_schedule_consecutive_failures{schedule="z-bad"} 3.0', text)
        self.assertIn('btu_schedule_last_success_timestamp_seconds{schedule="s0"} 12.0', text)
        self.assertIn('btu_schedule_unwell{schedule="z-bad",state="failing"} 2.0', text)
        self.assertIn("btu_schedule_series_dropped 0.0", text)

    def test_bound_keeps_the_unwell_first_and_counts_the_rest(self) -> None:
        text = self.scrape("a.local", 2)
        self.assertIn('btu_schedule_consecutive_failures{schedule="z-bad",site="a.local"} 3.0',
                      text)
        self.assertIn('schedule="s0",site="a.local"', text)
        self.assertNotIn('schedule="s1"', text)
        self.assertIn('btu_schedule_series_dropped{site="a.local"} 4.0', text)


class FakeResponse:
    def __init__(self, code: int) -> None:
        self.code = code


class FakeHttp:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.posts: list[dict[str, Any]] = []

    def post(self, url: str, data: bytes, **kwargs: Any) -> Deferred[Any]:
        self.posts.append(json.loads(data))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(FakeResponse(answer))

    def content(self, response: Any) -> Deferred[bytes]:
        return succeed(b"ok")


class WebhookTests(SynchronousTestCase):
    def test_message_text_for_slack_and_mattermost(self) -> None:
        body = message("a.local", "nightly", Health(OK, 0), Health(FAILING, CRITICAL,
                                                                   "3 failures in a row"), BAD)
        self.assertEqual(body["text"], ":rotating_light: a.local: schedule nightly is failing "
                         "(was ok): 3 failures in a row\nlast error: ValueError: <boom>")
        self.assertEqual((body["level"], body["consecutive_failures"]), ("critical", 3))

    def test_retried_with_backoff_then_the_next_one(self) -> None:
        clock = Clock()
        http = FakeHttp([ConnectionError("refused"), 500, 204, 200])
        hook = HealthWebhook(clock, "http://hook", None, http=http)
        hook.changed("a", Health(OK, 0), Health(FAILING, WARNING), BAD)
        hook.changed("b", Health(OK, 0), Health(FAILING, WARNING), BAD)
        self.assertEqual(len(http.posts), 1)  # one at a time, never waiting on a run
        clock.advance(1)
        self.assertEqual(len(http.posts), 2)
        clock.advance(1.9)
        self.assertEqual(len(http.posts), 2)  # 1 s, then 2 s
        clock.advance(0.1)
        self.assertEqual([p["schedule"] for p in http.posts], ["a", "a", "a", "b"])
        self.assertEqual(hook.sent, 2)

    def test_given_up_after_max_tries(self) -> None:
        clock = Clock()
        http = FakeHttp([500] * MAX_TRIES + [200])
        hook = HealthWebhook(clock, "http://hook", None, http=http)
        hook.changed("a", Health(OK, 0), Health(FAILING, WARNING), BAD)
        hook.changed("b", Health(OK, 0), Health(FAILING, WARNING), BAD)
        clock.pump([60] * MAX_TRIES)
        self.assertEqual(len(http.posts), MAX_TRIES + 1)
        self.assertEqual(http.posts[-1]["schedule"], "b")
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class WebhookStopTests(SynchronousTestCase):
    def test_stopped_while_a_post_is_out(self) -> None:
        """The POST's answer after stop() neither pops the emptied queue nor retries."""
        for answer in (200, 500):
            clock = Clock()
            pending: Deferred[Any] = Deferred()
            http = FakeHttp([])
            http.post = lambda url, data, **kw: pending  # type: ignore[method-assign]
            hook = HealthWebhook(clock, "http://hook", None, http=http)
            hook.changed("a", Health(OK, 0), Health(FAILING, WARNING), BAD)
            hook.stop()
            pending.callback(FakeResponse(answer))
            self.assertEqual((hook.sent, clock.getDelayedCalls()), (0, []))
            self.assertEqual(self.flushLoggedErrors(), [])


class StatusPageTests(SynchronousTestCase):
    def test_unwell_first_with_their_error_escaped(self) -> None:
        status = {"name": "btu", "services": {}, "unwell_schedules": [
            {"name": "nightly", "state": "failing", "level": "critical",
             "reason": "3 failures in a row", "last_error": "ValueError: <boom>"}]}
        html = render(status, None, 10, None, 0.0)
        self.assertIn("<h2>Unwell schedules</h2>", html)
        self.assertLess(html.index("Unwell schedules"), html.index("Dependencies"))
        self.assertIn("ValueError: &lt;boom&gt;", html)
        self.assertIn('<tr class="unwell critical">', html)
        self.assertNotIn("Unwell", render({"services": {}}, None, 10, None, 0.0))


class FakeRedis:
    def __init__(self, values: dict[str, str], paused: dict[str, int] | None = None) -> None:
        self.values = values
        self.paused = paused or {}

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        assert key == Keys().paused
        return {name.encode(): str(at).encode() for name, at in self.paused.items()}

    def hmget(self, key: str, names: list[str]) -> list[bytes | None]:
        return [self.values[n].encode() if n in self.values else None for n in names]

    def hscan_iter(self, key: str, count: int) -> Iterator[tuple[bytes, bytes]]:
        assert key == Keys().health
        for name, value in self.values.items():
            yield name.encode(), value.encode()


class CliTests(SynchronousTestCase):
    def run_health(self, records: dict[str, HealthRecord], *names: str,
                   json_out: bool = False, paused: dict[str, int] | None = None
                   ) -> tuple[int, str]:
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "s.toml").write_text("")
        (directory / "btu.toml").write_text(
            'full_refresh_internal_secs = 60\nscheduler_polling_interval = 5\n'
            'time_zone_string = "UTC"\nrq_host = "127.0.0.1"\nrq_port = 6379\n'
            f'socket_path = "{directory}/d.sock"\nschedules_file = "{directory}/s.toml"\n')
        fake = FakeRedis({name: encode(record) for name, record in records.items()}, paused)
        out = io.StringIO()
        ctx = common.Context(out=out, err=io.StringIO(), json=json_out,
                             config_path=str(directory / "btu.toml"), config_explicit=True)
        self.patch(common.Context, "redis", lambda self: fake)
        args = type("Args", (), {"names": list(names)})()
        return cmd_health(ctx, args), out.getvalue()  # type: ignore[arg-type]

    def test_exit_status_and_table(self) -> None:
        code, out = self.run_health({"good": GOOD})
        self.assertEqual(code, 0)
        self.assertIn("good", out)
        code, out = self.run_health({"good": GOOD, "bad": BAD})
        self.assertEqual(code, 2)
        self.assertLess(out.index("bad"), out.index("good"))  # the worst first
        self.assertIn("ValueError: <boom>", out)
        late = HealthRecord(last_enqueued=1, job=PendingJob("j", 1, 1))
        self.assertEqual(self.run_health({"late": late})[0], 1)

    def test_a_paused_schedule_is_paused_not_critical(self) -> None:
        """``btu pause`` is how an admin silences a failing schedule."""
        code, out = self.run_health({"bad": BAD}, json_out=True, paused={"bad": 1_700_000_000})
        self.assertEqual(code, 0)
        self.assertEqual([(r["name"], r["state"]) for r in json.loads(out)], [("bad", "paused")])

    def test_json_names_and_never_run(self) -> None:
        code, out = self.run_health({"bad": BAD}, "bad", "unknown", json_out=True)
        rows = json.loads(out)
        self.assertEqual(code, 2)
        self.assertEqual([(r["name"], r["state"]) for r in rows],
                         [("bad", "failing"), ("unknown", "never_run")])
        self.assertEqual(rows[0]["last_error"], "ValueError: <boom>")
        self.assertEqual(rows[0]["consecutive_failures"], 3)
        self.assertIsNotNone(rows[0]["last_failure"])


class RealHttpTests(TestCase):
    async def test_posts_json_to_a_real_server(self) -> None:
        """treq over a real socket: the body arrives as JSON with its text."""
        from twisted.internet import reactor
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        got: list[dict[str, Any]] = []
        arrived: Deferred[None] = Deferred()

        class Hook(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                got.append(json.loads(request.content.read()))
                reactor.callLater(0, arrived.callback, None)
                return b"ok"

        port = reactor.listenTCP(0, Site(Hook()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/hook"
        hook = HealthWebhook(reactor, url, "a.local")
        hook.changed("nightly", Health(OK, 0), Health(FAILING, WARNING, "1 failure"), BAD)
        await arrived
        self.assertEqual(got[0]["schedule"], "nightly")
        self.assertIn("schedule nightly is failing", got[0]["text"])


class BenchCliTests(SynchronousTestCase):
    def test_every_site_without_site_one_with_it(self) -> None:
        """With frappe_sites, each row names its site (each site has its own
        key prefix); --site shows one."""
        from tests.test_frappe_bench import COMMON, make_bench

        bench = make_bench(Path(self.mktemp()), COMMON, {
            "a.local": {"db_name": "_a", "db_password": "x"},
            "b.local": {"db_name": "_b", "db_password": "y"}})
        path = Path(self.mktemp())
        path.write_text(f'frappe_bench_path = "{bench}"\nfrappe_sites = ["a.local", "b.local"]\n'
                        'socket_path = "/tmp/{site}.sock"\n')
        values = {"btu_scheduler:a.local:health": {"x": encode(BAD)},
                  "btu_scheduler:b.local:health": {"x": encode(GOOD)}}

        class Keyed:
            def hgetall(self, key: str) -> dict[bytes, bytes]:
                return {}  # nothing paused

            def hscan_iter(self, key: str, count: int) -> Iterator[tuple[bytes, bytes]]:
                for name, value in values.get(key, {}).items():
                    yield name.encode(), value.encode()

        self.patch(common.Context, "redis", lambda self: Keyed())
        args = type("Args", (), {"names": []})()
        out = io.StringIO()
        ctx = common.Context(out=out, err=io.StringIO(), json=True, config_path=str(path),
                             config_explicit=True)
        self.assertEqual(cmd_health(ctx, args), 2)  # type: ignore[arg-type]
        rows = json.loads(out.getvalue())
        self.assertEqual([(r["site"], r["name"], r["state"]) for r in rows],
                         [("a.local", "x", "failing"), ("b.local", "x", "ok")])
        out = io.StringIO()
        ctx = common.Context(out=out, err=io.StringIO(), json=True, config_path=str(path),
                             config_explicit=True, site="b.local")
        self.assertEqual(cmd_health(ctx, args), 0)  # type: ignore[arg-type]
        self.assertEqual([r["site"] for r in json.loads(out.getvalue())], ["b.local"])


class PausedNamesTests(SynchronousTestCase):
    """The daemon's follower asks for the paused names synchronously: read at start,
    then again when asked and the last read is an interval old; a failed read keeps
    the last names; nothing is read while nobody asks (500 idle sites)."""

    def test_read_when_asked_and_stale_and_kept_on_failure(self) -> None:
        from twisted.internet.defer import fail, succeed
        from twisted.internet.task import Clock

        from btu_twisted.daemon.schedule_health import PausedNames
        from btu_twisted.store.pauses import Paused

        answers: list[Any] = [succeed(Paused(1, {"a": 1})), fail(ConnectionError("down")),
                              succeed(Paused(0, {}))]
        reads: list[float] = []
        clock = Clock()

        def read() -> Any:
            reads.append(clock.seconds())
            return answers.pop(0)

        names = PausedNames(clock, read, 3.0)
        names.start()
        self.assertEqual(names.names(), {"a"})
        clock.advance(100)
        self.assertEqual(reads, [0.0])  # nobody asked: nothing read
        self.assertEqual(names.names(), {"a"})  # stale: read again; Redis away, kept
        self.assertEqual(names.names(), {"a"})  # just read: not again
        clock.advance(3)
        self.assertEqual(names.names(), frozenset())
        self.assertEqual(reads, [0.0, 100.0, 103.0])
        self.assertEqual(clock.getDelayedCalls(), [])
