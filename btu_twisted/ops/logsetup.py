"""Apply ``tracing_level`` to whatever observers twistd has set up, and name a
bench site in its parts' lines.

twistd starts logging before the plugin's service starts and offers no hook for
a level filter, so we wrap the observers already registered on the global
publisher in a level filter.
"""

from __future__ import annotations

import weakref
from typing import cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    globalLogPublisher,
)

__all__ = ["SiteLogger", "apply_level"]

# The level filter put on each publisher, so that a second call (SIGHUP) changes its level.
_FILTERS: weakref.WeakKeyDictionary[LogPublisher, LogLevelFilterPredicate] = (
    weakref.WeakKeyDictionary()
)


def apply_level(level: LogLevel, publisher: LogPublisher = globalLogPublisher) -> None:
    """Filter every observer at ``level``; called again, change the level in place."""
    predicate = _FILTERS.get(publisher)
    if predicate is None:
        predicate = _FILTERS[publisher] = LogLevelFilterPredicate(defaultLogLevel=level)
    predicate.defaultLogLevel = level
    predicate.clearLogLevels()  # the root namespace's level is kept apart from the default
    observers = list(getattr(publisher, "_observers", []))
    for observer in observers:
        if isinstance(observer, FilteringLogObserver):
            continue
        publisher.removeObserver(observer)
        # Both provide the interfaces (zope.interface's @implementer), which mypy cannot see.
        filtering = FilteringLogObserver(observer, [cast(ILogFilterPredicate, predicate)])
        publisher.addObserver(cast(ILogObserver, filtering))


class SiteLogger(Logger):
    """A logger whose events say which site they are about: ``log_system``, what
    twistd's log lines show between brackets
    (``[erp.example.com btu_twisted.planning.planner.Planner#warn] planning deferred ...``)."""

    def __init__(self, site: str, namespace: str, source: object) -> None:
        super().__init__(namespace=namespace, source=source)
        self.site = site

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        # What twistd shows when there is no system, with the site in front.
        kwargs.setdefault("log_system", f"{self.site} {self.namespace}#{level.name}")
        super().emit(level, format, **kwargs)
