"""Apply ``tracing_level`` to whatever observers twistd has set up.

twistd starts logging before the plugin's service starts and offers no hook for
a level filter, so we wrap the observers already registered on the global
publisher in a level filter.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    globalLogPublisher,
)


def apply_level(level: LogLevel, publisher: LogPublisher = globalLogPublisher) -> None:
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observers = list(getattr(publisher, "_observers", []))
    for observer in observers:
        if isinstance(observer, FilteringLogObserver):
            continue
        publisher.removeObserver(observer)
        publisher.addObserver(FilteringLogObserver(observer, [predicate]))
