"""Prometheus metrics, served by prometheus_client's Twisted resource.

Each daemon has its own ``CollectorRegistry`` so several services in one
process (tests) never share counters.  Gauges that mirror live state read it
when scraped rather than being pushed on every change.

A daemon serving several sites (``frappe_sites``) has one registry whose
every metric carries a ``site`` label: each site reports through
``metrics.for_site(site)``.  One site's daemon has no such label, as before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.twisted import MetricsResource
from twisted.application.service import Service
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from btu_twisted.health import OK, STATES, Dependency

LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300)


class Metrics:
    """The metric families, and the reporting calls of one site.

    ``per_site``: every family has a leading ``site`` label, and only the
    views from :meth:`for_site` report.
    """

    def __init__(self, per_site: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        site = ["site"] if per_site else []
        self._bound: dict[str, str] = {}
        self.enqueued = Counter(
            "btu_jobs_enqueued", "RQ jobs enqueued, by queue", [*site, "queue"], registry=r
        )
        self.failures = Counter(
            "btu_failures", "Runs delayed, skipped or dropped, by reason", [*site, "reason"],
            registry=r,
        )
        self.lateness = Histogram(
            "btu_enqueue_lateness_seconds",
            "Enqueue time minus scheduled time",
            site,
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.fifo_length = Gauge(
            "btu_fifo_length", "Schedule names waiting to be planned", site, registry=r
        )
        self.planned = Gauge(
            "btu_planned_schedules", "Members in the sorted set at the last refresh", site,
            registry=r,
        )
        self.refresh_duration = Gauge(
            "btu_full_refresh_duration_seconds", "Duration of the last full refresh", site,
            registry=r,
        )
        self.refresh_success = Gauge(
            "btu_full_refresh_last_success_timestamp_seconds",
            "Unix time of the last successful full refresh",
            site,
            registry=r,
        )
        self.up = Gauge(
            "btu_dependency_up",
            "1 when the service answers and accepts the daemon's requests",
            [*site, "service"],
            registry=r,
        )
        self.state = Gauge(
            "btu_dependency_state",
            "1 for the service's current state: ok, down, or refusing (answers 401/403)",
            [*site, "service", "state"],
            registry=r,
        )

    def for_site(self, site: str) -> Metrics:
        """What one site of a ``per_site`` registry reports through: the same
        families, every sample labelled ``site``."""
        view = copy.copy(self)
        view._bound = {"site": site}
        return view

    def _of(self, metric: Any, **labels: str) -> Any:
        """The child of ``metric`` for this site and ``labels`` (the metric itself
        when it has no label at all)."""
        labels = {**self._bound, **labels}
        return metric.labels(**labels) if labels else metric

    def watch(self, fifo_length: Callable[[], int], dependencies: Mapping[str, Dependency]) -> None:
        self._of(self.fifo_length).set_function(lambda: float(fifo_length()))
        for name, dependency in dependencies.items():
            # A refusing site answers but every run is dropped: not "up" for an alert.
            self._of(self.up, service=name).set_function(
                lambda d=dependency: 1.0 if d.state == OK else 0.0
            )
            for state in STATES:
                self._of(self.state, service=name, state=state).set_function(
                    lambda d=dependency, s=state: 1.0 if d.state == s else 0.0
                )

    def job_enqueued(self, queue: str, lateness: float) -> None:
        self._of(self.enqueued, queue=queue).inc()
        self._of(self.lateness).observe(max(0.0, lateness))

    def failure(self, reason: str) -> None:
        self._of(self.failures, reason=reason).inc()

    def refreshed(self, at: float, duration: float, members: int) -> None:
        self._of(self.refresh_duration).set(duration)
        self._of(self.refresh_success).set(at + duration)
        self._of(self.planned).set(members)


class MetricsService(Service):
    """``/metrics`` (and the status page at ``/``) on ``host:port``; off unless
    ``metrics_port`` is set."""

    log = Logger()
    name = "metrics"

    def __init__(self, reactor: Any, metrics: Metrics, host: str, port: int) -> None:
        self._reactor = reactor
        self._metrics = metrics
        self._host = host
        self._port = port
        self._listening: Any = None
        #: What ``/`` serves (status_page.py), when the daemon hands one over.
        self.page: Resource | None = None

    async def start(self) -> None:
        # Twisted's web and endpoint constructors are unannotated, and mypy
        # cannot see that a Resource provides IResource (zope.interface).
        root = Resource()  # type: ignore[no-untyped-call]  # Twisted: unannotated
        metrics = MetricsResource(self._metrics.registry)  # type: ignore[no-untyped-call]  # prometheus_client: unannotated
        root.putChild(b"metrics", cast(IResource, metrics))
        if self.page is not None:
            root.putChild(b"", cast(IResource, self.page))
        endpoint = TCP4ServerEndpoint(  # type: ignore[no-untyped-call]  # Twisted: unannotated
            self._reactor, self._port, interface=self._host)
        site = Site(root)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self._listening = await endpoint.listen(site)  # type: ignore[no-untyped-call]  # Twisted: unannotated
        self.running = 1
        self.log.info("metrics at http://{host}:{port}/metrics", host=self._host,
                      port=self._listening.getHost().port)

    @property
    def port(self) -> int:
        return int(self._listening.getHost().port)

    def stopService(self) -> Any:
        self.running = 0
        listening, self._listening = self._listening, None
        return listening.stopListening() if listening is not None else None
