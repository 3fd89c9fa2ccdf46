"""Apply ``tracing_level`` to whatever observers twistd has set up.

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
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    globalLogPublisher,
)

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
