"""One daemon for several sites of a bench (``frappe_sites``).

Each site is a :class:`~btu_twisted.daemon.service.BtuService` of its own: its
database credentials, socket, key prefix and lease, BTU Configuration, change feed,
planner, refresh and timer, with the Config bench mode derives for it.  What
they share lives here: one :class:`~btu_twisted.sources.db_pool.DbPool` (at most
``mysql_max_connections`` MariaDB connections for all the sites together, so a
bench of hundreds of sites leaves MariaDB to Frappe; each site's change feed
paced by their number), one watch for Redis losing the sites' keys
(``key_watch``), one :class:`RedisGateway` (one Redis connection for
the process: a bench's sites share its ``redis_queue``), one
``metrics_port``, whose metrics carry a ``site`` label and whose status page
has a section per site, and one timer wake-up: an
:class:`~btu_twisted.timing.alarm.Alarm` holding a single ``callLater`` at the
earliest time any site's timer wants, which wakes only the timers whose time
has come, and one look at every site's next due run in place of each timer's
safety-net poll (``due_watch``).  Each timer still reads and claims in its own
key prefix.

A site must not hold the others back.  With ``["*"]`` the sites whose
database has no BTU tables are skipped at start, one log line each; a site
whose database cannot be reached then is skipped too, unless
``startup_without_database_connections`` asks to serve it anyway (it retries).
Once running, a site's failure that would end a one-site daemon (its socket
taken, its start-up check failed, its key prefix lost) stops that site only,
logged as critical; the process ends, exit status 1, only when no site is left.

SIGHUP (``systemctl reload``) reads the config file and the bench again, so a
site added with ``bench new-site`` is served without a restart: new sites are
started, sites skipped or stopped earlier are tried again, sites gone from the
bench (or from ``frappe_sites``) are stopped; the sites still served keep
running untouched.  ``tracing_level`` applies at once; the log line names every
other key that changed as taking effect at the next restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger, LogLevel

from btu_twisted.config import Config, ConfigError
from btu_twisted.daemon.bench_looks import DueWatch, KeyWatch
from btu_twisted.daemon.parts import Part, Parts, service_part
from btu_twisted.daemon.service import BENCH_LEASE_SECS, BtuService
from btu_twisted.daemon.startup import (
    STARTUP_CHECK_TIMEOUT,
    StartupError,
    database_of,
    exit_on_fatal,
    maybe_deferred,
    not_ready_for_reload,
    reason_of,
    startup_failure,
)
from btu_twisted.live_config import apply_change
from btu_twisted.ops.logsetup import SiteLogger, apply_level
from btu_twisted.redis_target import target_of
from btu_twisted.sources.change_feed import interval_for
from btu_twisted.sources.db_pool import DbPool, site_limit
from btu_twisted.store.gateway import RedisGateway
from btu_twisted.store.lease_renewal import LeaseRenewal
from btu_twisted.timing.alarm import Alarm
from btu_twisted.timing.tuning import lookahead_for

if TYPE_CHECKING:
    from btu_twisted.ops.metrics import Metrics, MetricsService

__all__ = ["SitesService"]


class SitesService(Service):
    """The sites of ``config.site_configs``, started once discovery says which to serve."""

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        on_fatal: Callable[[str], None] | None = None,
        warnings: list[str] | None = None,
        load_config: Callable[[], tuple[Config, list[str]]] | None = None,
    ) -> None:
        #: Reads the config file again, for :meth:`reload` (None: nothing to reload from).
        self._load_config = load_config
        self._reloading: Deferred[str] | None = None
        #: Applies a reloaded ``tracing_level`` (tests replace it).
        self.set_level: Callable[[LogLevel], None] = apply_level
        self.config = config
        self._reactor = reactor
        self._on_fatal = on_fatal or exit_on_fatal(reactor)
        self._warnings = warnings or []
        self.redis = RedisGateway(reactor, target=target_of(config))
        self.alarm = Alarm(reactor)
        bound = config.mysql_max_connections
        #: Every site's MariaDB connections, at most ``mysql_max_connections`` in all.
        self.db_pool = DbPool(reactor, bound, per_site=site_limit(bound))
        #: One EXISTS for every site's "keys still there" marker, in place of one per site.
        self.key_watch = KeyWatch(reactor, self.redis, lambda: self.served.values())
        #: One EVAL reading every site's next due run, in place of each timer's own poll.
        self.due_watch = DueWatch(reactor, self.redis, lambda: self.served.values(),
                                  config.scheduler_polling_interval)
        #: One EVAL renewing every site's key prefix lease, in place of one per site.
        self.leases = LeaseRenewal(reactor, self.redis, BENCH_LEASE_SECS / 3)
        self.metrics: Metrics | None = None
        self.metrics_service: MetricsService | None = None
        if config.metrics_port:
            from btu_twisted.ops.metrics import Metrics, MetricsService

            self.metrics = Metrics(per_site=True)
            self.metrics_service = MetricsService(
                reactor, self.metrics, config.metrics_host, config.metrics_port
            )
        #: Every candidate site, built (not started); ``served`` once discovery is done.
        self.sites = {name: self._site(name, site) for name, site in config.site_configs.items()}
        self.served: dict[str, BtuService] = {}
        #: Sites that stopped on a failure, with the one line that says why.
        self.failed: dict[str, str] = {}
        self.started: Deferred[None] | None = None
        metrics_service = self.metrics_service
        # Started in this order, stopped in the reverse: the sites stop before
        # the metrics port and the Redis connection they share.
        self.parts = Parts(
            Part("mariadb", self.db_pool.start, self.db_pool.stop),
            Part("redis", self.redis.start, self.redis.stop),
            Part("sites served", start=self._choose_sites),
            service_part("metrics", metrics_service, start=self._open_metrics)
            if metrics_service is not None else None,
            Part("sites", self._start_sites, self._stop_sites),
            Part("key watch", self.key_watch.start, self.key_watch.stop),
            Part("due watch", self.due_watch.start, self.due_watch.stop),
        )

    def _site(self, name: str, config: Config) -> BtuService:
        site = BtuService(
            config, self._reactor,
            on_fatal=lambda message: self._site_failed(name, message),
            redis=self.redis,
            metrics=self.metrics.for_site(name) if self.metrics is not None else None,
            site=name,
            alarm=self.alarm,
            db_pool=self.db_pool,
            own_watches=False,
        )
        site.guard.renewal = self.leases
        _name_site_in_logs(site, name, shared=(self.redis, self.redis.health, self.alarm,
                                               self.db_pool, self.key_watch, self.leases,
                                               self.due_watch))
        return site

    # -- start and stop ------------------------------------------------------
    def startService(self) -> Deferred[None]:
        self.running = 1
        self.started = Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._start_failed)
        return self.started

    async def _start(self) -> None:
        for warning in self._warnings:
            self.log.warn("config: {warning}", warning=warning)
        for name, why in self.config.skipped_sites.items():
            self.log.warn("site {site} skipped: {why}", site=name, why=why)
        await self.parts.start()

    async def _choose_sites(self) -> bool:
        """The sites to serve; False when stopped while the databases were looked at."""
        if self.config.frappe_sites == ("*",):
            names = await self._discover(list(self.sites))
        else:
            names = list(self.sites)
        if not self.running:
            return False  # stopped while the databases were being looked at
        if not names:
            raise StartupError(
                f"no site of the bench {self.config.frappe_bench_path} to serve "
                "(the lines above say why each site was skipped)"
            )
        self.served = {name: self.sites[name] for name in names}
        self.log.info("serving {count} site(s): {sites}; Redis {redis}", count=len(names),
                      sites=", ".join(names), redis=self.redis.target.describe())
        return True

    async def _open_metrics(self) -> bool:
        """Serve metrics; False when stopped meanwhile (the stop has passed the port)."""
        assert self.metrics_service is not None
        await self._serve_metrics()
        if not self.running:  # stopped meanwhile: _stop has passed the metrics port
            if self.metrics_service.running:
                await maybe_deferred(self.metrics_service.stopService())
            return False
        return True

    async def _start_sites(self) -> None:
        # At once: a slow or failing site does not delay the others' start.
        self._pace_sites()
        await DeferredList([site.startService() for site in self.served.values()])

    def _pace_sites(self) -> None:
        """Each site's change feed looks as often as the number of sites allows, and
        each timer starts a burst's builds early enough for them all."""
        interval, lookahead = interval_for(len(self.served)), lookahead_for(len(self.served))
        for site in self.served.values():
            site.changes.interval = interval
            site.timer.lookahead = lookahead

    async def _stop_sites(self) -> None:
        await _stop_all(dict(reversed(self.served.items())), self.log)

    async def _discover(self, names: list[str]) -> list[str]:
        """The sites among ``names`` whose database has ``tabBTU Task Schedule``,
        all checked at once; one line for each site skipped."""
        checks = [Deferred.fromCoroutine(self._has_btu(self.sites[name].config))
                  for name in names]
        for check in checks:
            check.addTimeout(STARTUP_CHECK_TIMEOUT, self._reactor)
        served = []
        results: list[tuple[bool, Any]] = await DeferredList(checks, consumeErrors=True)
        for name, (ok, result) in zip(names, results, strict=False):
            c = self.sites[name].config
            where = f"database {c.mysql_database!r} at {c.mysql_host}:{c.mysql_port}"
            if not ok:
                reason = (f"no answer within {STARTUP_CHECK_TIMEOUT:g} s"
                          if result.check(defer.TimeoutError) else reason_of(result.value))
            if ok and result:
                served.append(name)
            elif ok:
                self.log.info("site {site} skipped: its {where} has no `tabBTU Task Schedule` "
                              "table (BTU is not installed there)", site=name, where=where)
            elif self.config.startup_without_database_connections:
                served.append(name)
                self.log.warn("site {site}: its {where} cannot be used ({reason}); served "
                              "anyway, retrying (startup_without_database_connections)",
                              site=name, where=where, reason=reason)
            else:
                self.log.warn("site {site} skipped: its {where} cannot be used as {user!r}: "
                              "{reason}", site=name, where=where, user=c.mysql_user,
                              reason=reason)
        return served

    async def _has_btu(self, config: Config) -> bool:
        database = database_of(config, self._reactor, self.db_pool)
        return database is not None and await database.has_btu_tables()

    async def _serve_metrics(self) -> None:
        from btu_twisted.ops.status_page import SitesPage

        assert self.metrics_service is not None
        self.metrics_service.page = SitesPage(
            self._reactor, _sections(self.served), title=self.config.name or "btu")
        try:
            await self.metrics_service.start()
        except Exception as e:
            raise StartupError(
                f"cannot serve metrics on {self.config.metrics_host}:"
                f"{self.config.metrics_port}: {reason_of(e)}"
            ) from None

    def _site_failed(self, name: str, message: str) -> None:
        """What would end a one-site daemon ends this site only, until none is left."""
        self.failed[name] = message
        left = [site for site in self.served if site not in self.failed]
        self.log.critical("site {site} stopped: {message}; {left}", site=name, message=message,
                          left=f"still serving {', '.join(left)}" if left else "no site left")
        site = self.served.get(name)
        if site is not None and self.running:
            stopping = Deferred.fromCoroutine(_stop_site(site))
            stopping.addErrback(lambda f: self.log.failure("stopping site {site} failed", f,
                                                           site=name))
        if not left and self.running:
            self._on_fatal(message if len(self.served) == 1 else f"no site left: {message}")

    # -- reload (SIGHUP) --------------------------------------------------------------
    def sighup(self) -> Deferred[str]:
        """SIGHUP: :meth:`reload`; the outcome is in the log (no one waits for a reply),
        and nothing that goes wrong ends the daemon."""

        def failed(failure: Any) -> str:
            self.log.failure("reloading the sites failed", failure)
            return self._not_reloaded(reason_of(failure.value))

        return self.reload().addErrback(failed)

    def reload(self) -> Deferred[str]:
        """Serve the sites the config file and the bench name now; fires with
        the one line that says what changed (also logged)."""
        if self._reloading is not None:
            message = "sites not reloaded: a reload is already under way"
            self.log.warn(message)
            return defer.succeed(message)
        self._reloading = Deferred.fromCoroutine(self._reload())

        def done(result: Any) -> Any:
            self._reloading = None
            return result

        return self._reloading.addBoth(done)

    async def _reload(self) -> str:
        if self._load_config is None:
            return self._not_reloaded("the daemon was not started from a config file")
        why = await not_ready_for_reload(self)
        if why is not None:
            return self._not_reloaded(why)
        try:
            config, _ = self._load_config()
        except ConfigError as error:
            return self._not_reloaded("; ".join(error.problems))
        if target_of(config) != self.redis.target:
            return self._not_reloaded(
                f"the config names another Redis ({target_of(config).describe()}, serving "
                f"{self.redis.target.describe()}): that takes a restart")
        change = apply_change(self.config, config, self.set_level, followed=("frappe_sites",))
        self.config = change.config
        fresh = config.site_configs
        gone = [name for name in self.served if name not in fresh]
        again = [name for name in self.served if name in self.failed and name in fresh]
        new = [name for name in fresh if name not in self.served]
        for name in gone + again:
            self.failed.pop(name, None)
        await _stop_all({name: self.served.pop(name) for name in gone + again}, self.log)
        for name, why in config.skipped_sites.items():
            if name not in self.served:
                self.log.warn("site {site} skipped: {why}", site=name, why=why)
        tried = again + new
        for name in tried:
            self.sites[name] = self._site(name, fresh[name])
        started = (await self._discover(tried) if config.frappe_sites == ("*",) else tried)
        if not self.running:
            return self._not_reloaded("the daemon stopped meanwhile")
        for name in started:
            self.served[name] = self.sites[name]
        self._show_served()
        self._pace_sites()  # the running feeds and timers too, from their next look
        await DeferredList([self.served[name].startService() for name in started])
        summary = (f"sites reloaded: {_listed(started)} started, {_listed(gone)} stopped; "
                   f"serving {_listed(list(self.served))}; {change.describe()}")
        self.log.info(summary)
        if not self.served and self.running:
            self._on_fatal("no site left after the reload")
        return summary

    def _not_reloaded(self, why: str) -> str:
        message = f"sites not reloaded: {why}"
        self.log.error(message)
        return message

    def _show_served(self) -> None:
        """The status page's sections follow the sites served."""
        from btu_twisted.ops.status_page import SitesPage

        page = self.metrics_service.page if self.metrics_service is not None else None
        if isinstance(page, SitesPage):
            page.show(_sections(self.served))

    def _start_failed(self, failure: Any) -> None:
        self._on_fatal(startup_failure(failure, self.log))

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.running = 0
        await self.parts.stop()
        self.log.info("btu_twisted stopped (all sites)")

    # -- what the sites share --------------------------------------------------------
    def site(self, name: str) -> BtuService:
        """A served site's service (KeyError for another name)."""
        return self.served[name]


def _sections(served: dict[str, BtuService]) -> dict[str, Any]:
    from btu_twisted.ops.status_page import ScheduleReader

    return {name: (site.health.with_unwell(site.status), ScheduleReader(site.store))
            for name, site in served.items()}


def _name_site_in_logs(site: BtuService, name: str, shared: tuple[object, ...]) -> None:
    """Give the site's service, the parts it owns and theirs (btu_twisted's objects,
    two levels down, not the shared ones) a SiteLogger."""

    def ours(part: object) -> bool:
        return (type(part).__module__.startswith("btu_twisted.")
                and not any(part is other for other in shared))

    parts = [site] + [part for part in vars(site).values() if ours(part)]
    parts += [inner for part in parts[1:] if hasattr(part, "__dict__")
              for inner in vars(part).values() if ours(inner)]
    for part in parts:
        logger = getattr(type(part), "log", None)
        if isinstance(logger, Logger) and not isinstance(part.__dict__.get("log"), SiteLogger):
            part.log = SiteLogger(name, logger.namespace, part)


def _listed(names: list[str]) -> str:
    return f"{len(names)} ({', '.join(names)})" if names else "0"


async def _stop_site(site: BtuService) -> None:
    if site.running:
        await site.stopService()


async def _stop_all(sites: dict[str, BtuService], log: Logger) -> None:
    """All at once: each stop waits for its site's work in flight, which under load
    waits its turn on the shared pool (2-6 s a site at 500 sites); one after the
    other, ten dropped sites held a reload, and the new sites' start, 30 s."""
    stopped = await DeferredList([Deferred.fromCoroutine(_stop_site(site))
                                  for site in sites.values()], consumeErrors=True)
    for name, (ok, result) in zip(sites, stopped, strict=True):
        if not ok:
            log.failure("stopping site {site} failed", result, site=name)
