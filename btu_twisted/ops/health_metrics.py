"""Each schedule's health on ``/metrics``, read from the follower's records when scraped.

``btu_schedule_consecutive_failures``, ``btu_schedule_last_success_timestamp_seconds``
and ``btu_schedule_unwell`` (1 warning, 2 critical) carry a ``schedule`` label
(and ``site`` on a daemon serving several sites).  A bench of 100,000
schedules would make Prometheus store 100,000 series per family, so at most
``health_metrics_max_schedules`` schedules per site get series: the unwell
ones first (worst first), then the others by name; how many were left out is
``btu_schedule_series_dropped``.  Nothing is kept per schedule between
scrapes: a deleted schedule's series simply stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from btu_twisted.store.health_record import Health, HealthRecord

__all__ = ["HealthCollector", "ScheduleSource", "collector_of"]


@dataclass(frozen=True)
class ScheduleSource:
    """One site's (or the daemon's) records and states, and its bound."""

    site: str | None
    records: Callable[[], Mapping[str, HealthRecord]]
    states: Callable[[], Mapping[str, Health]]
    limit: int


class HealthCollector(Collector):
    """One per registry; every site of a daemon adds its source to it."""

    def __init__(self) -> None:
        self.sources: list[ScheduleSource] = []

    def describe(self) -> list[Any]:
        return []  # generated at scrape time; nothing to check for duplicates

    def collect(self) -> Iterator[Any]:
        per_site = any(source.site is not None for source in self.sources)
        labels = ["site", "schedule"] if per_site else ["schedule"]
        failures = GaugeMetricFamily(
            "btu_schedule_consecutive_failures",
            "Jobs of the schedule that failed in a row, up to its latest ended job", labels=labels)
        success = GaugeMetricFamily(
            "btu_schedule_last_success_timestamp_seconds",
            "Unix time the schedule's latest successful job ended", labels=labels)
        unwell = GaugeMetricFamily(
            "btu_schedule_unwell", "0 ok, 1 warning, 2 critical (btu health)",
            labels=[*labels, "state"])
        dropped = GaugeMetricFamily(
            "btu_schedule_series_dropped",
            "Schedules left out of the btu_schedule_* series (health_metrics_max_schedules)",
            labels=labels[:-1])
        for source in self.sources:
            site = [source.site or ""] if per_site else []
            records, states = source.records(), source.states()
            names = _shown(records, states, source.limit)
            for name in names:
                record = records[name]
                health = states.get(name)
                failures.add_metric([*site, name], record.consecutive_failures)
                if record.last_success is not None:
                    success.add_metric([*site, name], record.last_success)
                if health is not None:
                    unwell.add_metric([*site, name, health.state], health.level)
            dropped.add_metric(site, len(records) - len(names))
        yield from (failures, success, unwell, dropped)


def _shown(records: Mapping[str, HealthRecord], states: Mapping[str, Health],
           limit: int) -> list[str]:
    if len(records) <= limit:
        return sorted(records)
    bad = sorted((name for name in records if name in states and states[name].level),
                 key=lambda name: (-states[name].level, name))
    if len(bad) >= limit:
        return bad[:limit]
    taken = set(bad)
    rest = sorted(name for name in records if name not in taken)
    return bad + rest[:limit - len(bad)]


_COLLECTORS: WeakKeyDictionary[CollectorRegistry, HealthCollector] = WeakKeyDictionary()


def collector_of(registry: CollectorRegistry) -> HealthCollector:
    """The registry's one collector, registered at first use."""
    found = _COLLECTORS.get(registry)
    if found is None:
        found = _COLLECTORS[registry] = HealthCollector()
        registry.register(found)
    return found
