"""The daemon as one ``Service``: what it owns and in which order it starts.

Order matters: the database and Redis pools first, then the socket (so a
second daemon on the same path stops before touching anything), then the
check that MariaDB and Redis answer (unless
``startup_without_database_connections``), then the timer, the planner and
the full refresh that feeds them.  The socket does not wait for the check: it
answers ``ping`` as soon as the process is up, and a schedule named on it
waits in the FIFO until the planner starts (a failed check still ends the
daemon, socket removed).  Stopping runs in reverse.  Names still waiting in
the FIFO at stop are not saved: the next start's full refresh derives them
again from MariaDB.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger, LogLevel

from btu_twisted import __version__
from btu_twisted.config import Config, ConfigError
from btu_twisted.daemon.bench_looks import SITE_WATCH_OFF, TIMER_POLL_OFF
from btu_twisted.daemon.checks import check_services
from btu_twisted.daemon.control import SiteControl
from btu_twisted.daemon.control_socket import ControlSocketService, SocketInUseError
from btu_twisted.daemon.parts import Part, Parts, service_part
from btu_twisted.daemon.prefix import PrefixHold
from btu_twisted.daemon.protocol import ControlFactory
from btu_twisted.daemon.schedule_health import ScheduleHealth
from btu_twisted.daemon.startup import (
    StartupError,
    database_of,
    exit_on_fatal,
    not_ready_for_reload,
    startup_failure,
)
from btu_twisted.daemon.startup import reason_of as _reason
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.health import Dependency
from btu_twisted.jobs.builders import make_builders
from btu_twisted.live_config import apply_change
from btu_twisted.ops.heap import release_free_memory
from btu_twisted.ops.logsetup import apply_level
from btu_twisted.planning.planner import Planner
from btu_twisted.planning.refresh import FullRefresh
from btu_twisted.redis_target import target_of
from btu_twisted.seams import MetricsSink
from btu_twisted.sources.combined import FileSchedules, NameConflict, ScheduleSources
from btu_twisted.sources.db_pool import DbPool
from btu_twisted.sources.job_ids import JobIdRecorder
from btu_twisted.sources.mariadb import Database
from btu_twisted.sources.schedules_file import ScheduleFileError
from btu_twisted.store.gateway import RedisGateway
from btu_twisted.store.keys import Keys
from btu_twisted.store.prefix_guard import LEASE_SECS, PrefixGuard
from btu_twisted.store.schedule_store import ScheduleStore
from btu_twisted.timing.alarm import Alarm
from btu_twisted.timing.timer import Timer

if TYPE_CHECKING:
    from btu_twisted.ops.metrics import MetricsService

CANCEL_TIMEOUT = 5.0
#: The key prefix lease of each site of a bench (a dead daemon's sites free
#: their prefixes this long after; the same sites' next daemon takes them at once).
BENCH_LEASE_SECS = 90


def site_of(config: Config) -> str:
    """The site, as the prefix lease names it to another site's daemon."""
    return config.frappe_site_name or config.mysql_database or f"file:{config.schedules_file}"


def owner_of(config: Config) -> str:
    """Which daemons are one site: those of one database (high availability), else
    those of one schedules file."""
    return config.mysql_database or f"file:{config.schedules_file}"


class NoMetrics:
    """What the parts report to when ``metrics_port`` is unset: nothing reads it."""

    def watch(self, fifo_length: Callable[[], int], dependencies: Mapping[str, Dependency]) -> None:
        pass

    def job_enqueued(self, queue: str, lateness: float) -> None:
        pass

    def failure(self, reason: str) -> None:
        pass

    def refreshed(self, at: float, duration: float, members: int) -> None:
        pass


class BtuService(Service):
    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        on_fatal: Callable[[str], None] | None = None,
        warnings: list[str] | None = None,
        *,
        redis: RedisGateway | None = None,
        metrics: MetricsSink | None = None,
        site: str | None = None,
        alarm: Alarm | None = None,
        load_config: Callable[[], tuple[Config, list[str]]] | None = None,
        db_pool: DbPool | None = None,
        own_watches: bool = True,
    ) -> None:
        """``redis``, ``metrics``, ``site``, ``alarm`` and ``db_pool``: given by a daemon
        serving several sites (sites.py), which owns the shared gateway, metrics port,
        timer wake-up and MariaDB connections, and watches for lost Redis keys and
        for runs its timers were not told of for all its sites (``own_watches``
        False: then the prefix lease is renewed less often too); the service then
        neither starts nor stops them, and
        ``status`` names its site.  ``load_config`` reads the config file again
        for :meth:`sighup` (None: the config is not re-read)."""
        self.config = config
        self._load_config = load_config
        #: Applies a reloaded ``tracing_level`` (tests replace it).
        self.set_level: Callable[[LogLevel], None] = apply_level
        self._sighup_running: Deferred[str] | None = None
        self._reactor = reactor
        self._on_fatal = on_fatal or exit_on_fatal(reactor)
        self._warnings = warnings or []
        self._site = site
        self.started_at: float | None = None
        self.fifo = ScheduleFifo()
        self.metrics: MetricsSink = NoMetrics() if metrics is None else metrics
        self.metrics_service: MetricsService | None = None
        if config.metrics_port and metrics is None:
            # prometheus_client and twisted.web: loaded only when served.
            from btu_twisted.ops.metrics import Metrics, MetricsService

            self.metrics = Metrics()
            self.metrics_service = MetricsService(
                reactor, self.metrics, config.metrics_host, config.metrics_port
            )
        self.db = database_of(config, reactor, db_pool)
        self.sources = ScheduleSources(
            reactor,
            self.db,
            FileSchedules(config.schedules_file) if config.schedules_file else None,
        )
        self._owns_redis = redis is None
        self.redis = RedisGateway(reactor, target=target_of(config)) if redis is None else redis
        self.store = ScheduleStore(
            self.redis, Keys(config.redis_key_prefix), history_length=config.run_history_length
        )
        self.health = ScheduleHealth(config, reactor, self.redis, site, self.metrics,
                                     rows=self.sources, paused_from=self.store.paused)
        if self.metrics_service is not None:
            from btu_twisted.ops.status_page import ScheduleReader, StatusPage

            self.metrics_service.page = StatusPage(
                reactor, self.health.with_unwell(self.status), ScheduleReader(self.store))
        self.guard = PrefixGuard(
            reactor, self.redis, config.redis_key_prefix, site_of(config), self._lost_prefix,
            # Daemons of one database are one site (high availability): they share it.
            owner_id=owner_of(config),
            # A bench's daemon renews hundreds of leases: every 30 s, not every 10.
            lease_secs=LEASE_SECS if own_watches else BENCH_LEASE_SECS,
        )
        self.builder = make_builders(config, reactor)
        self.job_ids = JobIdRecorder(reactor, self.sources)
        self.timer = Timer(
            reactor,
            self.store,
            self.sources,
            self.builder,
            self.fifo,
            polling_interval=(config.scheduler_polling_interval if own_watches
                              else TIMER_POLL_OFF),
            misfire_grace=config.misfire_grace_secs,
            on_enqueued=self.health.and_enqueued(
                lambda claim, lateness: self.metrics.job_enqueued(claim.origin, lateness)),
            on_failure=self.metrics.failure,
            default_zone=config.time_zone_string,
            # File schedules' ids are left out where they are written (ScheduleSources).
            on_job_ids=self.job_ids.record,
            default_overlap=config.overlap,
            alarm=alarm,
            on_skipped=self.health.skipped,
        )
        self.planner = Planner(
            reactor,
            self.fifo,
            self.sources,
            self.store,
            default_zone=config.time_zone_string,
            on_planned=self.timer.planned,
            dependencies=(*self.sources.dependencies, self.redis.health),
            on_unplanned=self.health.and_unplanned(self.timer.forget),
            on_failure=self.metrics.failure,
            on_drained=release_free_memory,
        )
        self.refresh = FullRefresh(
            reactor, config.full_refresh_internal_secs, self.fifo, self.sources, self.store,
            on_refreshed=self.metrics.refreshed, memory=self.planner.memory,
            **({} if own_watches else {"watch_interval": SITE_WATCH_OFF}),
        )
        self.changes = self.sources.change_feed(reactor, self.fifo, self.refresh.trigger)
        self.metrics.watch(lambda: len(self.fifo), self._dependencies())
        self.control = SiteControl(reactor, self, self._dependencies, site)
        self.socket = ControlSocketService(
            reactor,
            config.socket_path,
            ControlFactory(self.control, reactor, site=site),
            mode=config.socket_mode,
            group=config.socket_file_group_owner,
        )
        self.started: Deferred[None] | None = None
        self.prefix = PrefixHold(
            reactor, self.guard, lambda: self.config, lambda: bool(self.running)
        )
        db, owned_redis = self.db, self.redis if self._owns_redis else None
        metrics_service = self.metrics_service
        # What serves the site, in the order it starts (stopping runs the other
        # way).  The prefix lease is released here, below the socket and the
        # metrics port, so no request can reach Redis in a prefix another
        # daemon may already hold; it is taken by `scheduling`, once they are up.
        self.parts = Parts(
            Part("schedules file", start=self._load_file),
            Part("mariadb", db.start, db.stop) if db is not None else None,
            Part("redis", owned_redis.start, owned_redis.stop) if owned_redis is not None else None,
            Part("builder", stop=self.builder.close),
            Part("prefix lease", stop=self.guard.release),
            Part("job ids", stop=self.job_ids.stop),
            service_part("socket", self.socket, start=self._open_socket),
            None if config.startup_without_database_connections
            else Part("checks", start=lambda: check_services(
                reactor, config, self.redis, self.db, self.sources)),
            service_part("metrics", metrics_service, start=self._serve_metrics)
            if metrics_service is not None else None,
        )
        #: Nothing plans, prunes or claims in the key prefix before it is ours.
        self.scheduling = Parts(
            Part("prefix lease", start=self._hold_prefix),
            self.health.part(),
            *(service_part(part.name, part, start=part.startService)
              for part in (self.timer, self.planner, self.refresh, self.changes)),
        )

    # -- start and stop ------------------------------------------------------
    def startService(self) -> Deferred[None]:
        # No children: self.parts and self.scheduling start the parts, in order.
        self.running = 1
        self.started = Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._start_failed)
        return self.started

    async def _start(self) -> None:
        for warning in self._warnings:
            self.log.warn("config: {warning}", warning=warning)
        _log_start(self.log, self.config, self.db, self.redis)
        await self.parts.start()
        self.started_at = self._reactor.seconds()
        if self.config.startup_without_database_connections:
            # Started now, socket answering; the scheduling starts once Redis does.
            later = Deferred.fromCoroutine(self.scheduling.start())
            later.addErrback(self._start_failed)
        else:
            await self.scheduling.start()

    async def _open_socket(self) -> None:
        try:
            await self.socket.startService()
        except SocketInUseError as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"cannot listen on {self.config.socket_path}: {e}") from None

    async def _serve_metrics(self) -> None:
        assert self.metrics_service is not None
        try:
            await self.metrics_service.start()
        except Exception as e:
            raise StartupError(
                f"cannot serve metrics on {self.config.metrics_host}:"
                f"{self.config.metrics_port}: {_reason(e)}"
            ) from None

    async def _hold_prefix(self) -> bool:
        """Hold the key prefix before anything plans, prunes or claims in it."""
        return await self.prefix.take() and bool(self.running)

    def _lost_prefix(self, message: str) -> None:
        self.log.critical("{message}", message=message)
        self._on_fatal(message)

    def _load_file(self) -> None:
        """The schedules file must be good to start: a broken one ends start-up."""
        try:
            diff = self.sources.load_file()
        except ScheduleFileError as e:
            for problem in e.problems:
                self.log.error("{problem}", problem=problem)
            raise StartupError(
                f"schedules_file has {len(e.problems)} problem(s): " + "; ".join(e.problems)
            ) from None
        if self.sources.file is not None:
            self.log.info("schedules file {path}: {count} schedules",
                          path=self.sources.file.path, count=len(diff.added))

    def _start_failed(self, failure: Any) -> None:
        self._on_fatal(startup_failure(failure, self.log))

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.running = 0
        self.control.stop()
        self.prefix.cancel()
        await self.scheduling.stop()
        await self.parts.stop()
        self.log.info("btu_twisted stopped" + (" serving {site}" if self._site else ""),
                      site=self._site)

    def _dependencies(self) -> dict[str, Dependency]:
        """The outside services the daemon uses: MariaDB only when configured."""
        site = self.builder.health
        return {
            **({"mariadb": self.db.health} if self.db is not None else {}),
            "redis": self.redis.health,
            **({"site": site} if site is not None else {}),
        }

    # -- what tests and the status page ask (the socket asks self.control itself) ------
    def request_planning(self, name: str) -> bool:
        return self.control.request_planning(name)

    def cancel(self, name: str) -> Deferred[bool]:
        return self.control.cancel(name)

    def reload(self) -> Deferred[str]:
        return self.control.reload()

    def status(self) -> dict[str, object]:  # no Redis round trip (the socket's counts)
        return self.control.snapshot()

    def sighup(self) -> Deferred[str]:
        """SIGHUP (``systemctl reload``): re-read the config file (its live keys apply,
        the others are named as taking a restart), the schedules file, and every
        schedule in MariaDB (a full refresh).  Never ends the daemon: whatever
        fails is one log line and the running settings stay.  Fires with the
        line that was logged."""
        if self._sighup_running is not None:
            return succeed(self._not_reloaded("a reload is already under way"))
        d = self._sighup_running = Deferred.fromCoroutine(self._sighup())

        def done(result: Any) -> Any:
            self._sighup_running = None
            return result

        def failed(failure: Any) -> str:
            self.log.failure("reload failed", failure)
            return self._not_reloaded(_reason(failure.value))

        return d.addErrback(failed).addBoth(done)

    async def _sighup(self) -> str:
        why = await not_ready_for_reload(self)
        if why is not None:
            return self._not_reloaded(why)
        parts = []
        if self._load_config is not None:
            try:
                fresh, _ = self._load_config()
            except ConfigError as error:
                return self._not_reloaded("; ".join(error.problems))
            change = apply_change(self.config, fresh, self.set_level)
            self.config = change.config
            parts.append(change.describe())
        if self.sources.file is not None:
            try:
                parts.append("schedules file: " + await self.control.reload())
            except (ScheduleFileError, NameConflict):
                parts.append("schedules file not reloaded (see above)")
        if self.db is not None:
            self.refresh.trigger().addErrback(
                lambda failure: self.log.failure("full refresh failed", failure))
            parts.append("every schedule in MariaDB read again")
        message = "reloaded: " + "; ".join(parts)
        self.log.info("{message}", message=message)
        return message

    def _not_reloaded(self, why: str) -> str:
        message = f"not reloaded: {why}; the running settings and schedules stay"
        self.log.error("{message}", message=message)
        return message

def _log_start(log: Logger, c: Config, db: Database | None, redis: RedisGateway) -> None:
    log.info(
        "btu_twisted {version} starting: builder {builder}, socket {socket}, "
        "schedules from {sources}, Redis {redis}",
        version=__version__,
        builder=c.job_builder if c.uses_mariadb else "function",
        socket=c.socket_path,
        sources=" and ".join(
            ([f"MariaDB {c.mysql_host}:{c.mysql_port}/{c.mysql_database}"]
             if db is not None else [])
            + ([f"file {c.schedules_file}"] if c.schedules_file else [])
        ),
        redis=redis.target.describe(),
    )


__all__ = ["BtuService"]
