"""``frappe_sites``: one daemon for many sites of a bench, without services.

Each site's Config is the one bench mode derives for ``frappe_site_name =
site``; the mistakes are one line each; ``btu --site`` picks a site; a site's
fatal failure stops that site until none is left.  The daemon on real
services: tests/integration/test_sites.py.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zlib
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from btu_twisted.cli import main
from btu_twisted.config import ConfigError, parse_config, site_config
from btu_twisted.daemon.service import BtuService
from btu_twisted.daemon.sites import SitesService
from btu_twisted.records import ScheduleRow
from btu_twisted.tap import Options, makeService
from btu_twisted.timing import tuning
from tests.test_frappe_bench import COMMON, make_bench

SITES = {
    "a.local": {"db_name": "_aaaa", "db_password": "pw-a"},
    "b.local": {"db_name": "_bbbb", "db_password": "pw-b", "db_host": "db-b.internal"},
}


class _Bench(SynchronousTestCase):
    def bench(self, sites: dict[str, Any] | None = None, **common: Any) -> Path:
        return make_bench(Path(self.mktemp()), {**COMMON, **common},
                          SITES if sites is None else sites)

    def values(self, bench: Path, sites: list[str] | None = None, **more: Any) -> dict[str, Any]:
        return {"frappe_bench_path": str(bench), "frappe_sites": sites or ["*"],
                "socket_path": "/run/btu_scheduler/{site}.sock", **more}

    def problems(self, data: dict[str, Any]) -> list[str]:
        return list(self.assertRaises(ConfigError, parse_config, data).problems)


class SiteConfigTests(_Bench):
    def test_each_site_derived_as_bench_mode_derives_it(self) -> None:
        """Database, key prefix, socket and job site per site; the TOML's other keys win
        for every site; the shared settings keep the templates."""
        config, warnings = parse_config(self.values(self.bench(), ["a.local", "b.local"],
                                                    tracing_level="DEBUG", mysql_port=3307))
        self.assertEqual(warnings, [])
        self.assertEqual(config.frappe_sites, ("a.local", "b.local"))
        self.assertEqual(list(config.site_configs), ["a.local", "b.local"])
        for site, own in SITES.items():
            c = config.site_configs[site]
            alone, _ = parse_config({"frappe_bench_path": config.frappe_bench_path,
                                     "frappe_site_name": site, "tracing_level": "DEBUG",
                                     "mysql_port": 3307,
                                     "socket_path": f"/run/btu_scheduler/{site}.sock"})
            self.assertEqual(c, alone)
            self.assertEqual(c.mysql_database, own["db_name"])
            self.assertEqual(c.redis_key_prefix, f"btu_scheduler:{site}:")
            self.assertEqual(c.socket_path, f"/run/btu_scheduler/{site}.sock")
            self.assertEqual((c.frappe_site_name, c.job_builder), (site, "frappe_site"))
            self.assertEqual((c.tracing_level, c.mysql_port), ("DEBUG", 3307))
        self.assertEqual(config.site_configs["b.local"].mysql_host, "db-b.internal")
        self.assertIsNone(config.mysql_database)
        self.assertEqual(config.socket_path, "/run/btu_scheduler/{site}.sock")
        self.assertNotIn("pw-a", repr(config))

    def test_redis_key_prefix_template(self) -> None:
        """A redis_key_prefix of the TOML is a template too."""
        config, _ = parse_config(self.values(self.bench(), redis_key_prefix="bench1:{site}:"))
        self.assertEqual(config.site_configs["a.local"].redis_key_prefix, "bench1:a.local:")

    def test_every_site_is_each_site_directory(self) -> None:
        """["*"]: the directories with a site_config.json; one that cannot be read is
        skipped with why; a directory without one (assets) is no site."""
        bench = self.bench({**SITES, "broken.local": {"db_type": "postgres", "db_name": "x"}})
        (bench / "sites" / "assets").mkdir()
        config, _ = parse_config(self.values(bench))
        self.assertEqual(list(config.site_configs), ["a.local", "b.local"])
        self.assertEqual(list(config.skipped_sites), ["broken.local"])
        self.assertIn("'postgres'; BTU needs MariaDB", config.skipped_sites["broken.local"])

    def test_one_site_needs_no_template(self) -> None:
        """One named site may keep a plain socket_path."""
        config, _ = parse_config(self.values(self.bench(), ["a.local"],
                                             socket_path="/run/btu.sock"))
        self.assertEqual(config.site_configs["a.local"].socket_path, "/run/btu.sock")


class MistakeTests(_Bench):
    def test_each_mistake_is_one_line(self) -> None:
        """Every misuse of frappe_sites names its key and what to do."""
        bench = self.bench()
        cases = {
            "needs frappe_bench_path": {"frappe_sites": ["a.local"], "socket_path": "/s"},
            "frappe_site_name: conflicts with frappe_sites":
                self.values(bench, frappe_site_name="a.local"),
            "socket_path: must contain {site}": self.values(bench, socket_path="/run/b.sock"),
            "redis_key_prefix: must contain {site}":
                self.values(bench, redis_key_prefix="btu_scheduler:"),
            "mysql_database: not with frappe_sites": self.values(bench, mysql_database="x"),
            "webserver_host_header: not with frappe_sites":
                self.values(bench, webserver_host_header="x"),
            "schedules_file: not with frappe_sites": self.values(bench, schedules_file="/x"),
            "frappe_sites: expected a list of site names": self.values(bench, "a.local"),
            "frappe_sites: must name at least one site": {**self.values(bench),
                                                          "frappe_sites": []},
            'frappe_sites: "*" already means every site': self.values(bench, ["*", "a.local"]),
            "frappe_sites: 'a.local' is listed twice": self.values(bench, ["a.local"] * 2),
            "frappe_sites: '../x' is not a site name": self.values(bench, ["../x"]),
            "frappe_sites: site 'zz.local': the bench": self.values(bench, ["a.local", "zz.local"]),
        }
        for expected, data in cases.items():
            problems = self.problems(data)
            self.assertTrue(any(expected in p for p in problems), (expected, problems))

    def test_sites_on_different_redis_servers(self) -> None:
        """One daemon has one Redis connection: a site with a redis_queue of its own is refused."""
        sites = {**SITES, "c.local": {"db_name": "_c", "db_password": "p", "redis_queue": "redis://10.0.0.9:6379"}}
        (problem,) = self.problems(self.values(self.bench(sites)))
        self.assertIn("sites 'a.local' and 'c.local' use different Redis servers", problem)

    def test_no_readable_site(self) -> None:
        """["*"] on a bench none of whose sites can be read: each site's reason."""
        problems = self.problems(self.values(self.bench({"x.local": {"db_type": "postgres"}})))
        self.assertEqual(len(problems), 1)
        self.assertIn("frappe_sites: site 'x.local':", problems[0])

    def test_not_a_bench(self) -> None:
        (problem,) = self.problems(self.values(Path(self.mktemp())))
        self.assertIn("is not a Frappe bench", problem)

    def test_choosing_a_site(self) -> None:
        """site_config(): the site's Config; no site or another one names the choices."""
        config, _ = parse_config(self.values(self.bench()))
        self.assertEqual(site_config(config, "b.local").mysql_database, "_bbbb")
        (problem,) = self.assertRaises(ConfigError, site_config, config, None).problems
        self.assertIn("choose one with --site (a.local, b.local)", problem)
        (problem,) = self.assertRaises(ConfigError, site_config, config, "z.local").problems
        self.assertIn("'z.local' is not served by this config; its sites: a.local, b.local",
                      problem)
        single = config.site_configs["a.local"]
        self.assertIs(site_config(single, None), single)
        self.assertIs(site_config(single, "a.local"), single)
        self.assertRaises(ConfigError, site_config, single, "b.local")


class CliTests(_Bench):
    def write(self, **more: Any) -> str:
        path = Path(self.mktemp())
        lines = [f"{key} = {json.dumps(value)}" for key, value in
                 self.values(self.bench(), **more).items()]
        path.write_text("\n".join(lines) + "\n")
        os.chmod(path, 0o600)
        return str(path)

    def run_btu(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()

    def test_site_option_picks_the_site(self) -> None:
        """``btu --site b.local print-config``: that site's values, and where each came from."""
        path = self.write()
        code, out, err = self.run_btu("--config", path, "--site", "b.local", "print-config")
        self.assertEqual((code, err), (0, ""))
        rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
        self.assertEqual(rows["mysql_database"][1:3], ["_bbbb", "sites/b.local/site_config.json"])
        self.assertEqual(rows["socket_path"][1], "/run/btu_scheduler/b.local.sock")
        self.assertEqual(rows["frappe_site_name"][1:], ["b.local", "--site", "(one", "of",
                                                        "frappe_sites)"])
        self.assertNotIn("pw-b", out)
        code, out, err = self.run_btu("print-config", "--config", path, "--site", "a.local",
                                      "--json")
        self.assertEqual(json.loads(out)["mysql_database"], "_aaaa")

    def test_without_site_one_line_lists_the_sites(self) -> None:
        """A command that needs one site: exit 2, one line naming the sites."""
        path = self.write()
        for argv in (["print-config"], ["status"], ["--site", "z.local", "show-scheduled"]):
            code, out, err = self.run_btu("--config", path, *argv)
            self.assertEqual((code, out), (2, ""), argv)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn("a.local, b.local", err)

    def test_commands_without_a_site_still_work(self) -> None:
        """next-runs reads only the shared time zone: no --site needed."""
        code, out, err = self.run_btu("--config", self.write(time_zone_string="Europe/Paris"),
                                      "next-runs", "0 12 * * *", "-n", "1", "--json")
        self.assertEqual((code, err), (0, ""))
        (run,) = json.loads(out)
        self.assertRegex(run, r"T12:00:00\+0[12]:00$")  # Paris time, summer or winter


class DaemonWiringTests(_Bench):
    def test_make_service_builds_a_service_per_site(self) -> None:
        """twistd's makeService: one SitesService, a site service each, one Redis gateway;
        nothing started (twistd may fork after it)."""
        path = Path(self.mktemp())
        lines = [f"{key} = {json.dumps(value)}"
                 for key, value in self.values(self.bench(), metrics_port=9464).items()]
        path.write_text("\n".join(lines) + "\n")
        os.chmod(path, 0o600)
        options = Options()
        options.parseOptions(["--config", str(path)])
        reactor = MemoryReactorClock()
        service = makeService(options, reactor)
        self.assertIsInstance(service, SitesService)
        assert isinstance(service, SitesService)
        self.assertEqual(list(service.sites), ["a.local", "b.local"])
        for name, site in service.sites.items():
            self.assertIs(site.redis, service.redis)
            self.assertIsNone(site.metrics_service)
            self.assertEqual(site.config.frappe_site_name, name)
        self.assertEqual(reactor.tcpServers, [])
        self.assertFalse(service.running)

    def test_each_site_builds_its_own_jobs(self) -> None:
        """The same schedule name on two sites: job ids "<site>::…", Frappe's execute_job
        called for that site, the site's own queue prefix."""
        config, _ = parse_config(self.values(self.bench()))
        service = SitesService(config, MemoryReactorClock())
        row = ScheduleRow(
            name="TS-000001", task="BTU-1", enabled=True, cron_string="* * * * *",
            queue_name="default", argument_overrides=None, task_description=None,
            schedule_description=None, cron_time_zone=None,
            function_string="myapp.tasks.hello", task_arguments="{'n': 1}",
            max_task_duration=60, task_queue_name=None, desc_short="hello",
        )
        for name, site in service.sites.items():
            built = self.successResultOf(site.builder.build(row, 1_800_000_000))
            self.assertTrue(built.job_id.startswith(f"{name}::"), built.job_id)
            self.assertEqual(built.origin, "prod-bench:default")
            # rq's job data: a zlib-compressed pickle of (function, instance, args, kwargs).
            func, _, _, kwargs = pickle.loads(zlib.decompress(built.fields["data"]))
            self.assertEqual(func, "frappe.utils.background_jobs.execute_job")
            self.assertEqual((kwargs["site"], kwargs["kwargs"]), (name, {"n": 1}))

    def test_log_lines_name_their_site(self) -> None:
        """A site's parts log with the site as the event's system (twistd's "[site]");
        the shared Redis gateway's lines belong to no site."""
        config, _ = parse_config(self.values(self.bench()))
        service = SitesService(config, MemoryReactorClock())
        a = service.sites["a.local"]
        with capturedLogs() as events:
            for part in (a, a.timer, a.planner, a.refresh, a.socket, a.guard, a.db.health,
                         a.timer._runs):
                part.log.info("hello from {part}", part=type(part).__name__)
            service.redis.log.info("shared")
            service.redis.health.log.info("shared")
            service.alarm.log.info("shared")
        systems = [str(e.get("log_system")).partition(" ")[0] for e in events]
        self.assertEqual(systems, ["a.local"] * 8 + ["None"] * 3)
        self.assertEqual(events[1]["log_system"], "a.local btu_twisted.timing.timer.Timer#info")
        self.assertIs(events[1]["log_source"], a.timer)

    def test_socket_request_lines_name_their_site(self) -> None:
        """Each site's socket logs its requests with the site as the event's system,
        and the connection numbers (``#N``) come from one count for the process:
        two sites' first requests are not both "#1"."""
        config, _ = parse_config(self.values(self.bench()))
        service = SitesService(config, MemoryReactorClock())
        with capturedLogs() as events:
            for name in ("a.local", "b.local", "a.local"):
                factory = service.sites[name].socket._factory
                protocol = factory.buildProtocol(None)
                protocol.makeConnection(StringTransport())
                protocol.dataReceived(b'{"request_type": "create_task_schedule", '
                                      b'"request_content": "TS-000001"}')
                protocol.connectionLost(None)
        asked = [e for e in events if "asked to plan" in formatEvent(e)]
        self.assertEqual([str(e["log_system"]).partition(" ")[0] for e in asked],
                         ["a.local", "b.local", "a.local"])
        serials = [int(str(e["peer"]).lstrip("#").split()[0]) for e in asked]
        self.assertEqual(serials, sorted(set(serials)))

    def test_the_sites_timers_share_one_alarm(self) -> None:
        """One timer wake-up for all the sites (issue 10): every site's timer wakes
        through the service's one Alarm; a one-site service has an alarm of its own."""
        config, _ = parse_config(self.values(self.bench()))
        service = SitesService(config, MemoryReactorClock())
        alarms = {id(site.timer._wake._alarm) for site in service.sites.values()}
        self.assertEqual(alarms, {id(service.alarm)})
        one = BtuService(config.site_configs["a.local"], MemoryReactorClock())
        self.assertIsNot(one.timer._wake._alarm, service.alarm)

    def test_cancel_makes_the_timer_forget_the_schedule(self) -> None:
        """The BTU app cancels a schedule before deleting it, and no change
        feed row follows a delete: what the timer remembers of it (a held-back
        stretch, a logged delay) goes with the cancel."""
        config, _ = parse_config(self.values(self.bench()))
        service = BtuService(config.site_configs["a.local"], MemoryReactorClock())
        service.timer._overlapping.update({"TS-1", "TS-2"})
        service.timer._delayed["TS-1"] = "site down"
        service.cancel("TS-1").addErrback(lambda _: None)
        self.assertEqual(service.timer._overlapping, {"TS-2"})
        self.assertEqual(service.timer._delayed, {})

    def test_a_failed_site_stops_alone_until_none_is_left(self) -> None:
        """What would end a one-site daemon ends its site; the last one ends the process."""
        config, _ = parse_config(self.values(self.bench()))
        fatal: list[str] = []
        service = SitesService(config, MemoryReactorClock(), on_fatal=fatal.append)
        service.running = 1
        service.served = dict(service.sites)
        service._site_failed("a.local", "the Redis keys btu_scheduler:a.local:* belong to ...")
        self.assertEqual(fatal, [])
        self.assertEqual(list(service.failed), ["a.local"])
        service._site_failed("b.local", "cannot listen on /run/b.sock")
        self.assertEqual(fatal, ["no site left: cannot listen on /run/b.sock"])

    def test_stopped_while_discovering_starts_no_site(self) -> None:
        """A stop that comes while ["*"]'s databases are being looked at: no site starts."""
        config, _ = parse_config(self.values(self.bench()))
        service = SitesService(config, MemoryReactorClock())
        pending: list[Deferred[bool]] = []

        async def has_btu(config: Any) -> bool:
            pending.append(Deferred())
            return await pending[-1]

        service._has_btu = has_btu  # type: ignore[method-assign]
        started = service.startService()
        self.assertEqual(len(pending), 2)
        self.successResultOf(service.stopService())
        for d in pending:
            d.callback(True)
        self.successResultOf(started)
        self.assertEqual(service.served, {})
        self.assertFalse(any(site.running for site in service.sites.values()))


class ReloadTests(_Bench):
    """SIGHUP in ``frappe_sites`` mode: the config and the bench read again."""

    def setUp(self) -> None:
        self.starts: list[str] = []
        self.stops: list[str] = []

        def start(site: BtuService) -> Deferred[None]:
            site.running = 1
            self.starts.append(site.config.frappe_site_name or "")
            return Deferred.fromCoroutine(_done())

        def stop(site: BtuService) -> Deferred[None]:
            site.running = 0
            self.stops.append(site.config.frappe_site_name or "")
            return Deferred.fromCoroutine(_done())

        async def _done() -> None:
            return None

        self.patch(BtuService, "startService", start)
        self.patch(BtuService, "stopService", stop)

    def started(self, bench: Path, **more: Any) -> tuple[SitesService, list[str], list[Any]]:
        values = self.values(bench, **more)
        fatal: list[str] = []
        loads: list[Any] = []

        def load() -> tuple[Any, list[str]]:
            loads.append(1)
            return parse_config(values)

        config, _ = parse_config(values)
        service = SitesService(config, MemoryReactorClock(), on_fatal=fatal.append,
                               load_config=load)

        async def has_btu(config: Any) -> bool:
            return config.frappe_site_name != "c.local"  # c.local: BTU not installed

        service._has_btu = has_btu  # type: ignore[method-assign]
        self.successResultOf(service.startService())
        # Its Redis gateway would go on connecting on the global reactor, which
        # the next (asynchronous) test case runs and finds dirty.
        self.addCleanup(lambda: self.successResultOf(service.stopService()))
        self.assertEqual(sorted(self.starts), ["a.local", "b.local"])
        self.starts.clear()
        return service, fatal, loads

    def test_new_sites_start_gone_ones_stop_the_others_keep_running(self) -> None:
        """``bench new-site d.local`` and ``bench drop-site b.local``: a reload
        starts d.local, stops b.local, and leaves a.local's service as it was;
        c.local (no BTU) is checked again and skipped again, one line."""
        bench = self.bench({**SITES, "c.local": {"db_name": "_cccc", "db_password": "c"}})
        service, fatal, _ = self.started(bench)
        a = service.served["a.local"]
        (bench / "sites" / "d.local").mkdir()
        (bench / "sites" / "d.local" / "site_config.json").write_text(
            json.dumps({"db_name": "_dddd", "db_password": "pw-d"}))
        (bench / "sites" / "b.local" / "site_config.json").unlink()
        with capturedLogs() as events:
            summary = self.successResultOf(service.reload())
        self.assertEqual(summary, "sites reloaded: 1 (d.local) started, 1 (b.local) stopped; "
                                  "serving 2 (a.local, d.local); config unchanged")
        self.assertEqual((self.starts, self.stops), (["d.local"], ["b.local"]))
        self.assertIs(service.served["a.local"], a)
        self.assertEqual(service.served["d.local"].config.mysql_database, "_dddd")
        skipped = [e for e in events if "skipped" in str(e.get("log_format"))]
        self.assertEqual(len(skipped), 1)
        self.assertEqual(fatal, [])

    def test_the_timers_lookahead_follows_the_number_of_sites(self) -> None:
        """A bench's timers build a burst's jobs further ahead the more sites share
        the reactor (tuning.lookahead_for), set again when a reload adds sites."""
        self.patch(tuning, "LOOKAHEAD_PER_SITE", 1.5)  # 2 sites: 3 s, 3 sites: 4.5 s
        bench = self.bench()
        service, _, _ = self.started(bench)
        self.assertEqual({site.timer.lookahead for site in service.served.values()}, {3.0})
        (bench / "sites" / "d.local").mkdir()
        (bench / "sites" / "d.local" / "site_config.json").write_text(
            json.dumps({"db_name": "_dddd", "db_password": "pw-d"}))
        self.successResultOf(service.reload())
        self.assertEqual({site.timer.lookahead for site in service.served.values()}, {4.5})
        self.assertEqual(tuning.lookahead_for(1), tuning.LOOKAHEAD)

    def test_gone_sites_stop_all_at_once(self) -> None:
        """A stop waits for its site's work in flight (seconds under load, on the
        shared pool): the sites dropped together stop together, one that fails
        to stop is logged, and the new site starts once they are done."""
        bench = self.bench()
        service, fatal, _ = self.started(bench)
        pending: dict[str, Deferred[None]] = {}

        def stop(site: BtuService) -> Deferred[None]:
            site.running = 0
            name = site.config.frappe_site_name or ""
            self.stops.append(name)
            pending[name] = Deferred()
            return pending[name]

        self.patch(BtuService, "stopService", stop)
        (bench / "sites" / "d.local").mkdir()
        (bench / "sites" / "d.local" / "site_config.json").write_text(
            json.dumps({"db_name": "_dddd", "db_password": "pw-d"}))
        for name in ("a.local", "b.local"):
            (bench / "sites" / name / "site_config.json").unlink()
        with capturedLogs() as events:
            reloading = service.reload()
            self.assertEqual(sorted(self.stops), ["a.local", "b.local"])
            self.assertNoResult(reloading)
            pending["a.local"].errback(RuntimeError("a.local's planner would not stop"))
            self.assertEqual(self.starts, [])
            pending["b.local"].callback(None)
            summary = self.successResultOf(reloading)
        self.assertIn("1 (d.local) started, 2 (a.local, b.local) stopped", summary)
        self.assertEqual(self.starts, ["d.local"])
        failures = [e for e in events if e.get("log_failure") is not None]
        self.assertEqual([e["site"] for e in failures], ["a.local"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(fatal, [])

    def test_a_failed_site_is_tried_again(self) -> None:
        """A site stopped by its own failure gets a new service at the next reload."""
        service, fatal, _ = self.started(self.bench())
        old = service.served["a.local"]
        service._site_failed("a.local", "cannot listen on /run/a.sock")
        summary = self.successResultOf(service.reload())
        self.assertIn("1 (a.local) started, 0 stopped", summary)
        self.assertIsNot(service.served["a.local"], old)
        self.assertEqual(service.failed, {})
        self.assertEqual(self.starts, ["a.local"])

    def test_a_bad_config_or_another_redis_changes_nothing(self) -> None:
        """The config as it is now must be good, and name the same Redis."""
        bench = self.bench()
        service, fatal, _ = self.started(bench)
        served = dict(service.served)
        (bench / "sites" / "common_site_config.json").write_text(
            json.dumps({**COMMON, "redis_queue": "redis://127.0.0.1:11001"}))
        with capturedLogs() as events:
            summary = self.successResultOf(service.reload())
        self.assertTrue(summary.startswith("sites not reloaded: the config names another "
                                           "Redis"), summary)
        (bench / "sites" / "common_site_config.json").unlink()
        summary = self.successResultOf(service.reload())
        self.assertTrue(summary.startswith("sites not reloaded: frappe_bench_path:"), summary)
        self.assertEqual(service.served, served)
        self.assertEqual((self.starts, self.stops), ([], []))
        self.assertEqual(len(events), 1)
        self.assertEqual(fatal, [])

    def test_twistd_wires_sighup_to_the_reload(self) -> None:
        """makeService gives the sites a way to read the same config file again."""
        path = Path(self.mktemp())
        lines = [f"{key} = {json.dumps(value)}" for key, value in self.values(self.bench()).items()]
        path.write_text("\n".join(lines) + "\n")
        os.chmod(path, 0o600)
        options = Options()
        options.parseOptions(["--config", str(path)])
        service = makeService(options, MemoryReactorClock())
        assert isinstance(service, SitesService)
        assert service._load_config is not None
        config, _ = service._load_config()
        self.assertEqual(list(config.site_configs), ["a.local", "b.local"])
