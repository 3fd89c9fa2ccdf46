"""One reactor wake-up for the timers of every site a daemon serves.

A daemon serving many sites (``frappe_sites``) has a timer per site, each
sleeping until its earliest run is close.  Rather than one ``callLater`` per
site, they share an :class:`Alarm`: each timer holds a :class:`Waker` and asks
it for a time; the alarm keeps one ``DelayedCall``, at the earliest time any
of them wants, and when it fires it wakes those whose time has come — never a
timer whose time is still ahead — then sleeps until the next one.  A one-site
daemon's timer has an alarm of its own and wakes exactly as with a
``callLater``.

Timers are few (one per site), so the earliest time is found by looking at
each; the order in which timers due together are woken is by time, then by
the order their wakers were made, so that it never depends on hashing.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

from twisted.logger import Logger

from btu_twisted.clock import Clock, DelayedCall

__all__ = ["Alarm", "Waker"]


class Waker:
    """One timer's place on an :class:`Alarm` (made by :meth:`Alarm.waker`)."""

    __slots__ = ("_alarm", "_callback", "_order", "when")

    def __init__(self, alarm: Alarm, order: int, callback: Callable[[], None]) -> None:
        self._alarm = alarm
        self._order = order
        self._callback = callback
        #: The time this waker's callback is to run, None when it waits for nothing.
        self.when: float | None = None

    def at(self, when: float) -> None:
        """Run the callback at ``when``, or earlier if an earlier time was asked for:
        a timer only ever brings its wake-up forward, like re-arming a
        ``callLater`` only when the new time is earlier."""
        if self.when is not None and self.when <= when:
            return
        self.when = when
        self._alarm._changed(self)

    def cancel(self) -> None:
        """Wait for nothing (a timer stopping); the other wakers keep their times."""
        if self.when is not None:
            self.when = None
            self._alarm._changed(self)

    def active(self) -> bool:
        return self.when is not None


class Alarm:
    log = Logger()

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._numbers = count()
        self._waiting: dict[Waker, float] = {}  # each waker waiting -> its when
        self._call: DelayedCall | None = None
        self._target: float | None = None  # when _call is to fire
        self._firing = False

    def waker(self, callback: Callable[[], None]) -> Waker:
        """A waker running ``callback`` (which must not raise) at the times asked for."""
        return Waker(self, next(self._numbers), callback)

    def pending(self, until: float | None = None) -> list[tuple[float, Waker]]:
        """The wakers waiting (due by ``until``, if given), earliest first."""
        return sorted(((when, w) for w, when in self._waiting.items()
                       if until is None or when <= until),
                      key=lambda item: (item[0], item[1]._order))

    # -- the one DelayedCall -----------------------------------------------------
    def _changed(self, waker: Waker) -> None:
        if waker.when is None:
            self._waiting.pop(waker, None)
        else:
            self._waiting[waker] = waker.when
        if not self._firing:
            self._rearm()

    def _rearm(self) -> None:
        """Make the DelayedCall fire at the earliest time wanted (none if none is)."""
        soonest = min(self._waiting.values(), default=None)
        if self._call is not None and self._call.active():
            if soonest == self._target:
                return
            self._call.cancel()
        self._call = None
        self._target = soonest
        if soonest is not None:
            delay = max(0.0, soonest - self._clock.seconds())
            self._call = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        """Wake, in order, every waker whose time has come; then sleep until the next."""
        # The call fired, so its time has come even if the clock reads a hair
        # before it (the float sum of "now + delay").
        now = max(self._clock.seconds(), self._target or 0.0)
        self._call = None
        self._target = None
        self._firing = True
        try:
            # Only the due ones: sorting a bench's 500 timers at every wake-up was
            # the alarm's main cost.
            for when, waker in self.pending(now):
                # A waker an earlier callback cancelled or moved is no longer due.
                if waker.when != when:
                    continue
                waker.when = None
                self._waiting.pop(waker, None)
                try:
                    waker._callback()
                except Exception:  # noqa: BLE001 - logged; the others must run
                    # The other timers (the other sites) must still be woken.
                    self.log.failure("waking {callback} failed", callback=waker._callback)
        finally:
            self._firing = False
            self._rearm()
