"""Requests and replies on the control socket.

The BTU app's client (COMPAT.md section 1) sends one JSON object with no
newline, keeps the connection open, sleeps half a second and reads once.  A
request therefore ends where its top-level object ends; a newline ends it too,
so line-oriented clients work (one request per line: a raw newline inside an
object ends the request, and the JSON parser then rejects it).  Several
requests may share a connection and are answered in order, one line each.

The Rust daemon did a single 1024-byte ``read()`` (COMPAT.md 6.9) while
holding a lock, so one idle or malformed client froze everything (6.10).
Here every connection is framed incrementally, bounded in size, depth and
time, and a bad request costs only its own connection: it gets one
``Error: ...`` line, then the connection is closed.

A client that sends requests without reading the replies cannot make the
daemon hold them: the protocol is the transport's streaming producer, so when
the transport's write buffer is full it stops handling requests and stops
reading until the buffer drains.  Every value a client chose is shortened
before it reaches a log line or an error reply.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from btu_twisted.clock import Clock, DelayedCall
from btu_twisted.daemon import replies
from btu_twisted.daemon.connection import Connection, describe_peer
from btu_twisted.daemon.framing import (
    Declined,
    Framer,
    RequestError,
    echo,
    one_line,
    schedule_name,
    short_reason,
    shorten,
)
from btu_twisted.ops.logsetup import SiteLogger
from btu_twisted.seams import SchedulerControl, UnknownSchedule

__all__ = ["ControlFactory", "ControlProtocol"]


T = TypeVar("T")

#: Connection numbers (``#N`` in the log lines): one count for the process, so
#: that with a bench's sites (a socket each) no two connections share one.
_SERIALS = itertools.count(1)


def _deferred(result: Deferred[T], method: str) -> Deferred[T]:
    """The control's answer, which must be a Deferred (a bug otherwise: internal error)."""
    if not isinstance(result, Deferred):
        raise TypeError(f"{method}() returned {result!r}, not a Deferred")
    return result


@implementer(IPushProducer)
class ControlProtocol(Protocol):
    """One client connection: frame, check and answer requests in order.

    While a reply is outstanding (a ``cancel``), reading is paused and no
    further request is handled, so replies can never overtake each other.
    The same happens while the transport's write buffer is full (it calls
    ``pauseProducing``): replies wait in the client's socket, not in our memory.
    """

    log = Logger()

    def __init__(self, factory: ControlFactory, serial: int) -> None:
        self._settings = factory
        self._serial = serial
        self._control = factory.control
        self._framer = Framer(factory.max_request_bytes, factory.max_depth)
        self._peer = f"#{serial}"
        self._connected = False
        self._closing = False
        self._pending = False  # a reply is awaited from the control
        self._throttled = False  # the transport's write buffer is full
        self._registered = False  # we are the transport's producer
        self._admitted = False  # counted in the factory's open connections
        self._processing = False  # inside the request loop
        self._final_error: str | None = None  # to write once the pending reply is out
        self._idle_call: DelayedCall | None = None
        self._handlers: dict[str, Callable[[object], None]] = {
            "ping": self._ping,
            "status": self._status,
            "create_task_schedule": self._create,
            "cancel_task_schedule": self._cancel,
            "reload": self._reload,
            "pause_task_schedule": lambda c: self._one(c, "pause", self._control.pause),
            "resume_task_schedule": lambda c: self._one(c, "resume", self._control.resume),
        }

    @property
    def _link(self) -> Connection:
        # Twisted types it as ITransport | None; connected, it is a stream transport.
        return cast(Connection, self.transport)

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        self._peer = describe_peer(self._link, self._serial)
        self._admitted = self._settings.admit()
        if not self._admitted:
            self._closing = True
            self._close_with_error("too many connections; try again later")
            return
        self._link.registerProducer(self, True)
        self._registered = True
        self._start_idle_timer()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._admitted:
            self._admitted = False
            self._settings.release()
        self._connected = False
        self._closing = True
        self._stop_idle_timer()
        self._framer.clear()

    # -- IPushProducer: the transport's write buffer is full / drained ------

    def pauseProducing(self) -> None:
        if self._throttled or self._closing:
            return
        self._throttled = True
        self._link.pauseProducing()

    def resumeProducing(self) -> None:
        if not self._throttled:
            return
        self._throttled = False
        if self._closing or self._pending:
            return
        self._link.resumeProducing()
        if not self._processing:
            self._run(self._process)

    def stopProducing(self) -> None:
        self._closing = True

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._framer.feed(data)
        self._run(self._process)

    # -- the request loop ------------------------------------------------

    def _run(self, step: Callable[[], None]) -> None:
        """Run ``step``, turning every exception into an error reply."""
        self._processing = True
        try:
            step()
        except RequestError as error:
            self._reject(str(error))
        except Exception:
            self.log.failure("control request from {peer} failed", peer=self._peer)
            self._reject("internal error", warn=False)
        finally:
            self._processing = False

    def _process(self) -> None:
        while not self._pending and not self._closing and not self._throttled:
            request = self._framer.next_request()
            if request is None:
                break
            self._start_idle_timer()
            self._handle(request)
        if self._pending and len(self._framer) > self._settings.max_request_bytes:
            raise self._framer.too_large()

    def _handle(self, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("request is not valid UTF-8") from None
        try:
            request = json.loads(text)
        except json.JSONDecodeError as error:
            raise RequestError(
                f"request is not valid JSON ({error.msg} at character {error.pos})"
            ) from None
        except ValueError:
            raise RequestError("request is not valid JSON") from None
        if not isinstance(request, dict):
            raise RequestError("request is not a JSON object")
        request_type = request.get("request_type")
        if not isinstance(request_type, str):
            raise RequestError("request_type is missing or not a string")
        handler = self._handlers.get(request_type)
        if handler is None:
            raise RequestError(f"unhandled request_type {echo(request_type)}")
        handler(request.get("request_content"))

    # -- request types ---------------------------------------------------

    def _ping(self, content: object) -> None:
        self._write("pong")

    def _status(self, content: object) -> None:
        status = self._control.status()
        if isinstance(status, Deferred):
            # Counted in Redis first (SiteControl.status): answered in order, like cancel.
            self._reply_when(status.addCallback(replies.status_line))
            return
        self._write(replies.status_line(status))

    def _create(self, content: object) -> None:
        name = schedule_name(content)
        if self._control.request_planning(name):
            self.log.info(
                "{peer} asked to plan {schedule}", peer=self._peer, schedule=shorten(name)
            )
            self._write(replies.created(name))
        else:
            self.log.warn(
                "{peer} asked to plan {schedule}, but the planning queue is full",
                peer=self._peer,
                schedule=shorten(name),
            )
            self._write(replies.queue_full(name))

    def _cancel(self, content: object) -> None:
        name = schedule_name(content)
        self.log.info(
            "{peer} asked to cancel {schedule}", peer=self._peer, schedule=shorten(name)
        )
        result = _deferred(self._control.cancel(name), "cancel")
        self._reply_when(result.addCallbacks(
            self._cancelled, self._cancel_failed, callbackArgs=(name,), errbackArgs=(name,)
        ))

    def _one(self, content: object, verb: str, act: Callable[[str], Deferred[str]]) -> None:
        """pause_task_schedule, resume_task_schedule, reload NAME: one named schedule."""
        name = schedule_name(content)
        self.log.info("{peer} asked to {verb} {s}", peer=self._peer, verb=verb, s=shorten(name))
        result = _deferred(act(name), verb)
        self._reply_when(result.addErrback(_failed, verb, name, self._peer, self.log))

    def _reload(self, content: object) -> None:
        if content is not None:
            # ``btu reload NAME``: one schedule, which must exist (not the BTU
            # app's create_task_schedule, which takes names not yet committed).
            self._one(content, "re-plan", self._control.replan)
            return
        self.log.info("{peer} asked to reload the schedules file", peer=self._peer)
        result = _deferred(self._control.reload(), "reload")
        self._reply_when(result.addCallbacks(replies.file_reloaded, replies.file_not_reloaded))

    def _reply_when(self, result: Deferred[str]) -> None:
        """Answer with ``result``'s line; hold further requests until it fires."""
        self._pending = True
        result.addCallback(self._finish_pending)
        result.addErrback(self._internal_failure)
        if self._pending:  # not answered synchronously: hold further requests
            self._stop_idle_timer()
            self._link.pauseProducing()

    def _cancelled(self, removed: bool, name: str) -> str:
        note = self._control.cancel_note(name)
        return replies.cancelled(removed, name) + ("" if note is None else f" {note}")

    def _cancel_failed(self, failure: Failure, name: str) -> str:
        self.log.failure(
            "could not cancel {schedule} for {peer}", failure,
            schedule=shorten(name), peer=self._peer,
        )
        return f"Error: could not cancel Task Schedule {name}: {short_reason(failure)}"

    def _finish_pending(self, line: str) -> None:
        self._pending = False
        if not self._connected:
            return  # the client left; the outcome is already logged
        self._write(line)
        if self._final_error is not None:
            self._close_with_error(self._final_error)
            return
        if self._processing:
            return  # answered synchronously: the running loop goes on
        self._start_idle_timer()
        if self._throttled:
            return  # resumeProducing goes on once the reply buffer drains
        self._link.resumeProducing()
        self._run(self._process)

    def _internal_failure(self, failure: Failure) -> None:
        self.log.failure("control reply to {peer} failed", failure, peer=self._peer)
        self._pending = False
        if self._connected and not self._link.disconnecting:
            self._closing = True
            self._close_with_error("internal error")

    # -- replies ---------------------------------------------------------

    def _write(self, line: str) -> None:
        self._link.write(
            one_line(line).encode("utf-8", "backslashreplace") + b"\n"
        )

    def _reject(self, reason: str, warn: bool = True) -> None:
        """Answer a bad request with one error line, then close."""
        if warn:
            self.log.warn(
                "rejected control request from {peer}: {reason}", peer=self._peer, reason=reason
            )
        self._closing = True
        self._stop_idle_timer()
        self._framer.clear()
        if self._pending:
            self._final_error = reason  # after the reply the client is waiting for
        elif self._connected:
            self._close_with_error(reason)

    def _close_with_error(self, reason: str) -> None:
        self._write("Error: " + reason)
        self._unregister()
        self._link.loseConnection()

    def _unregister(self) -> None:
        """Stop being the transport's producer: a transport whose producer is
        paused would otherwise never finish closing."""
        if self._registered:
            self._registered = False
            self._link.unregisterProducer()

    # -- idle timer ------------------------------------------------------

    def _start_idle_timer(self) -> None:
        self._stop_idle_timer()
        self._idle_call = self._settings.clock.callLater(
            self._settings.idle_timeout, self._idle_timed_out
        )

    def _stop_idle_timer(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _idle_timed_out(self) -> None:
        self._idle_call = None
        if self._throttled:
            # It has read none of its replies for that long: an error line
            # would only join them, and waiting to flush them may be forever.
            self.log.warn(
                "closing control connection {peer}: it read no reply for {timeout:g} seconds",
                peer=self._peer, timeout=self._settings.idle_timeout,
            )
            self._closing = True
            self._framer.clear()
            self._unregister()
            self._link.abortConnection()
            return
        self._reject(f"no complete request within {self._settings.idle_timeout:g} seconds")


def _failed(failure: Failure, verb: str, name: str, peer: str, log: Logger) -> str:
    """The error line of a request about one schedule that failed: a name no source
    has, or a full planning queue, is no fault of ours; anything else is logged."""
    if isinstance(failure.value, UnknownSchedule):
        return f"Error: {failure.getErrorMessage()}; nothing to {verb}."
    if isinstance(failure.value, Declined):
        return f"Error: {failure.getErrorMessage()}"
    log.failure("could not {verb} {schedule} for {peer}", failure, verb=verb,
                schedule=shorten(name), peer=peer)
    return f"Error: could not {verb} Task Schedule {shorten(name)}: {short_reason(failure)}"


class ControlFactory(Factory):
    """Builds a ControlProtocol per connection, sharing the limits and clock.

    Each connection's memory is bounded (one request, one write buffer); the
    number of connections is bounded too, so that no client can multiply it.
    """

    log = Logger()
    noisy = False  # connections are logged by the protocol, with peer credentials

    def __init__(
        self,
        control: SchedulerControl,
        clock: Clock,
        idle_timeout: float = 30.0,
        max_request_bytes: int = 65536,
        max_depth: int = 32,
        max_connections: int = 1024,
        site: str | None = None,
        serials: Iterator[int] = _SERIALS,
    ) -> None:
        self.control = control
        self.site = site
        self._serials = serials
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_request_bytes = max_request_bytes
        self.max_depth = max_depth
        self.max_connections = max_connections
        self.connections = 0
        self._refusing = False

    def admit(self) -> bool:
        """Count a new connection in, or False when there are too many.

        Logged when refusing starts and when it ends, not per connection.
        """
        if self.connections >= self.max_connections:
            if not self._refusing:
                self._refusing = True
                self.log.warn(
                    "refusing control connections: {count} are open (the limit)",
                    count=self.connections,
                )
            return False
        self.connections += 1
        return True

    def release(self) -> None:
        self.connections -= 1
        if self._refusing and self.connections < self.max_connections:
            self._refusing = False
            self.log.info("accepting control connections again")

    def buildProtocol(self, addr: IAddress | None) -> ControlProtocol:
        protocol = ControlProtocol(self, next(self._serials))
        protocol.factory = self
        if self.site is not None:
            # A bench's sites each have a socket: say whose request each line is.
            protocol.log = SiteLogger(self.site, ControlProtocol.log.namespace, protocol)
        return protocol
