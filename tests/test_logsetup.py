"""``tracing_level`` filters what twistd's observers see."""

from __future__ import annotations

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.trial import unittest

from btu_twisted.ops.logsetup import apply_level


class ApplyLevelTests(unittest.TestCase):
    def test_events_below_the_level_are_dropped(self) -> None:
        """With WARN, info and debug events no longer reach the observer that
        was registered before; warnings and errors still do."""
        publisher = LogPublisher()
        seen: list[dict] = []
        publisher.addObserver(seen.append)
        apply_level(LogLevel.warn, publisher)
        log = Logger(namespace="test", observer=publisher)
        log.debug("debug")
        log.info("info")
        log.warn("warn")
        log.error("error")
        self.assertEqual([e["log_format"] for e in seen], ["warn", "error"])

    def test_applying_twice_does_not_double_wrap(self) -> None:
        """A second call leaves one filtered observer (no duplicate events)."""
        publisher = LogPublisher()
        seen: list[dict] = []
        publisher.addObserver(seen.append)
        apply_level(LogLevel.info, publisher)
        apply_level(LogLevel.info, publisher)
        Logger(namespace="test", observer=publisher).info("once")
        self.assertEqual(len(seen), 1)

    def test_applying_again_changes_the_level(self) -> None:
        """SIGHUP with a new tracing_level: the same filter now lets debug through,
        and back again."""
        publisher = LogPublisher()
        seen: list[dict] = []
        publisher.addObserver(seen.append)
        log = Logger(namespace="test", observer=publisher)
        apply_level(LogLevel.info, publisher)
        log.debug("hidden")
        apply_level(LogLevel.debug, publisher)
        log.debug("shown")
        apply_level(LogLevel.warn, publisher)
        log.info("hidden again")
        self.assertEqual([e["log_format"] for e in seen], ["shown"])
