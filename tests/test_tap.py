"""``twistd btu`` wiring: SIGHUP re-reads the schedules file."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from btu_twisted.tap import reload_on_sighup


class _Reactor:
    """Records what a signal handler hands to the reactor thread."""

    def __init__(self) -> None:
        self.calls: list[Callable[[], object]] = []

    def callFromThread(self, func: Callable[[], object], *args: Any) -> None:
        self.calls.append(func)


class SighupTests(SynchronousTestCase):
    def test_sighup_hands_the_reload_to_the_reactor(self) -> None:
        """The handler does nothing itself but schedule the reload in the reactor."""
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        reactor = _Reactor()
        reloads: list[int] = []

        def reload() -> None:
            reloads.append(1)

        reload_on_sighup(reactor, reload)
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(reactor.calls, [reload])
        self.assertEqual(reloads, [])
