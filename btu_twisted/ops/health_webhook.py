"""``health_webhook_url``: one JSON POST per change of a schedule's state.

The body carries a ``text`` that Slack and Mattermost incoming webhooks show
as is, and the fields a program wants.  Sending is off the timer's path
entirely: a change is queued (at most MAX_QUEUED; past it the oldest are
dropped, with one log line), one POST is out at a time, and a failed one
(no answer, or a status other than 2xx) is retried with exponential backoff
up to MAX_TRIES before it is given up, logged.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from btu_twisted.health import Backoff
from btu_twisted.store.health_record import LEVELS, Health, HealthRecord

__all__ = ["MAX_QUEUED", "MAX_TRIES", "TIMEOUT_SECS", "HealthWebhook", "message"]

MAX_QUEUED = 1000
MAX_TRIES = 6
TIMEOUT_SECS = 10.0


def message(site: str | None, name: str, before: Health, now: Health,
            record: HealthRecord) -> dict[str, Any]:
    """The JSON body for one change."""
    where = f"{site}: " if site else ""
    mark = {0: ":white_check_mark:", 1: ":warning:", 2: ":rotating_light:"}[now.level]
    text = f"{mark} {where}schedule {name} is {now.state} (was {before.state})"
    if now.reason:
        text += f": {now.reason}"
    if record.last_error and record.consecutive_failures:
        text += f"\nlast error: {record.last_error}"
    return {
        "text": text,
        "site": site,
        "schedule": name,
        "state": now.state,
        "level": LEVELS[now.level],
        "previous_state": before.state,
        "reason": now.reason,
        "consecutive_failures": record.consecutive_failures,
        "last_success": record.last_success,
        "last_failure": record.last_failure,
        "last_error": record.last_error,
    }


class HealthWebhook:
    log = Logger()

    def __init__(self, reactor: Any, url: str, site: str | None = None,
                 http: Any = None) -> None:
        """``http``: something with treq's ``post`` (tests); default treq itself."""
        self._reactor = reactor
        self._url = url
        self._site = site
        self._http = http if http is not None else treq
        self._queue: deque[dict[str, Any]] = deque()
        self._busy = False  # a POST is out
        self._stopped = False
        self._backoff = Backoff(first=1.0, limit=60.0)
        self._tries = 0
        self._later: Any = None
        self.sent = 0

    def changed(self, name: str, before: Health, now: Health, record: HealthRecord) -> None:
        """A listener of the job follower."""
        if len(self._queue) >= MAX_QUEUED:
            lost = self._queue.popleft()
            self.log.warn("health webhook behind: change of {schedule} not sent",
                          schedule=lost["schedule"])
        self._queue.append(message(self._site, name, before, now, record))
        self._next()

    def _next(self) -> None:
        if self._busy or self._later is not None or not self._queue:
            return
        self._busy = True
        Deferred.fromCoroutine(self._send(self._queue[0]))

    async def _send(self, body: dict[str, Any]) -> None:
        try:
            response = await self._http.post(
                self._url, data=json.dumps(body).encode("utf-8"),
                headers={b"Content-Type": [b"application/json"]},
                timeout=TIMEOUT_SECS, reactor=self._reactor,
                # A few changes an hour: no connection is kept between them.
                persistent=False)
            code = int(response.code)
            await self._http.content(response)
            problem = None if 200 <= code < 300 else f"HTTP {code}"
        except Exception as e:
            problem = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        self._busy = False
        if self._stopped:
            return  # stopped while this POST was out: its queue is gone
        if problem is None:
            self._queue.popleft()
            self.sent += 1
            self._backoff.reset()
            self._tries = 0
            self._next()
            return
        self._tries += 1
        if self._tries >= MAX_TRIES:
            self.log.error("health webhook: change of {schedule} not sent after {tries} tries "
                           "({problem})", schedule=body["schedule"], tries=self._tries,
                           problem=problem)
            self._queue.popleft()
            self._tries = 0
            self._backoff.reset()
            self._next()
            return
        delay = self._backoff.next_delay()
        self.log.warn("health webhook: {problem}; trying again in {delay:g} s",
                      problem=problem, delay=delay)
        self._later = self._reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._later = None
        self._next()

    def stop(self) -> None:
        """Changes not yet sent are dropped (the records in Redis keep the states)."""
        self._stopped = True
        if self._later is not None and self._later.active():
            self._later.cancel()
        self._later = None
        self._queue.clear()
