"""Tests for btu_twisted.daemon.protocol: framing, replies, limits and errors.

Everything runs in memory (StringTransport, task.Clock), so the BTU client's
byte pattern, split deliveries and timeouts are checked deterministically.
"""

from __future__ import annotations

import datetime
import json

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from btu_twisted.daemon.protocol import ControlFactory, ControlProtocol
from btu_twisted.seams import UnknownSchedule

PING = b'{"request_type": "ping", "request_content": null}'
TS = "TS-000001"


def request(request_type: object, content: object = None) -> bytes:
    """What the BTU app's client sends: json.dumps, no newline."""
    return json.dumps({"request_type": request_type, "request_content": content}).encode()


CREATED = f"BTU Scheduler now re-processing Task Schedule {TS} in Python RQ.\n".encode()
CANCELLED = f"Successfully cancelled BTU Task Schedule {TS} in Python RQ.\n".encode()
NOT_SCHEDULED = (
    f"BTU Task Schedule {TS} was not scheduled in Python RQ; nothing to cancel.\n".encode()
)


class FakeControl:
    """Records what the protocol asked for; results are set per test."""

    def __init__(self) -> None:
        self.planned: list[str] = []
        self.cancelled: list[str] = []
        self.status_calls = 0
        self.accept = True
        self.cancel_results: list[Deferred[bool]] = []  # handed out in order
        self.error: Exception | None = None  # raised by every method when set
        self.reloads = 0
        self.reload_results: list[Deferred[str]] = []
        self.paused: list[str] = []
        self.resumed: list[str] = []
        self.pause_results: list[Deferred[str]] = []  # handed out in order
        self.notes: dict[str, str] = {}  # cancel_note per name

    def request_planning(self, name: str) -> bool:
        if self.error is not None:
            raise self.error
        self.planned.append(name)
        return self.accept

    def cancel(self, name: str) -> Deferred[bool]:
        if self.error is not None:
            raise self.error
        self.cancelled.append(name)
        if self.cancel_results:
            return self.cancel_results.pop(0)
        return succeed(True)

    def status(self) -> dict[str, object]:
        if self.error is not None:
            raise self.error
        self.status_calls += 1
        return {"queued": 2, "started": datetime.datetime(2024, 1, 2, 3, 4, 5)}

    def replan(self, name: str) -> Deferred[str]:
        if self.error is not None:
            raise self.error
        if name == "NOSUCH":
            return fail(UnknownSchedule("no Task Schedule 'NOSUCH' in MariaDB"))
        self.planned.append(name)
        return succeed(f"BTU Scheduler now re-processing Task Schedule {name} in Python RQ.")

    def reload(self) -> Deferred[str]:
        if self.error is not None:
            raise self.error
        self.reloads += 1
        return self.reload_results.pop(0) if self.reload_results else succeed("0 added")

    def pause(self, name: str) -> Deferred[str]:
        self.paused.append(name)
        return self.pause_results.pop(0) if self.pause_results else succeed(f"Paused {name}.")

    def resume(self, name: str) -> Deferred[str]:
        self.resumed.append(name)
        return self.pause_results.pop(0) if self.pause_results else succeed(f"Resumed {name}.")

    def cancel_note(self, name: str) -> str | None:
        return self.notes.get(name)

    def saw_nothing(self) -> bool:
        return not (self.planned or self.cancelled or self.status_calls)


class ProtocolTestCase(SynchronousTestCase):
    """Shared set-up: one connection over a StringTransport."""

    transport_class: type[StringTransport] = StringTransport

    def setUp(self) -> None:
        self.clock = Clock()
        self.control = FakeControl()
        self.protocol: ControlProtocol | None = None
        self.connect()

    def connect(self, **limits: int | float) -> ControlProtocol:
        """Open a fresh connection, closing the previous one."""
        if self.protocol is not None:
            self.disconnect()
        self.factory = ControlFactory(self.control, self.clock, **limits)  # type: ignore[arg-type]
        self.protocol = self.factory.buildProtocol(None)  # type: ignore[arg-type]
        self.transport = self.transport_class()
        self.protocol.makeConnection(self.transport)
        return self.protocol

    def disconnect(self) -> None:
        """Close the connection as the reactor would; no timer may survive it."""
        if not self.transport.disconnecting:
            self.transport.loseConnection()
        self.protocol.connectionLost(Failure(Exception("closed")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def tearDown(self) -> None:
        self.disconnect()

    def send(self, *chunks: bytes) -> bytes:
        for chunk in chunks:
            self.protocol.dataReceived(chunk)
        return self.transport.value()

    def assertRejected(self, data: bytes | list[bytes], reason: str) -> None:
        """One ``Error: reason`` line, one warning, connection closed, nothing queued."""
        chunks = data if isinstance(data, list) else [data]
        with capturedLogs() as events:
            reply = self.send(*chunks)
        self.assertEqual(reply, b"Error: " + reason.encode() + b"\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(self.control.saw_nothing())
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["reason"], reason)
        self.assertIn("peer", warnings[0])
        # Whatever comes after the error is ignored.
        self.protocol.dataReceived(PING)
        self.assertEqual(self.transport.value(), reply)


class RequestTypeTests(ProtocolTestCase):
    """Each request type gets its one-line reply."""

    def test_ping_btu_pattern(self) -> None:
        """The BTU client's exact bytes (no newline) are answered at once; the connection stays."""
        self.assertEqual(self.send(request("ping")), b"pong\n")
        self.assertFalse(self.transport.disconnecting)
        self.assertTrue(self.control.saw_nothing())

    def test_ping_without_content(self) -> None:
        """``request_content`` may be absent for ping."""
        self.assertEqual(self.send(b'{"request_type":"ping"}'), b"pong\n")

    def test_ping_ignores_content(self) -> None:
        """Whatever ping carries as content is ignored."""
        self.assertEqual(self.send(request("ping", {"x": [1]})), b"pong\n")

    def test_status(self) -> None:
        """status answers with the control's dict as one line of compact JSON."""
        reply = self.send(request("status"))
        self.assertEqual(reply, b'{"queued":2,"started":"2024-01-02 03:04:05"}\n')
        self.assertEqual(self.control.status_calls, 1)

    def test_reload(self) -> None:
        """reload re-reads the schedules file and answers with what changed."""
        self.assertEqual(self.send(request("reload")), b"Schedules file reloaded: 0 added.\n")
        self.assertEqual(self.control.reloads, 1)
        self.assertFalse(self.transport.disconnecting)

    def test_reload_a_schedule(self) -> None:
        """reload with a name re-plans that schedule, not the file; the connection stays."""
        self.assertEqual(self.send(request("reload", TS)), CREATED)
        self.assertEqual((self.control.planned, self.control.reloads), ([TS], 0))
        self.assertFalse(self.transport.disconnecting)

    def test_reload_an_unknown_schedule(self) -> None:
        """An unknown name is an Error line (the CLI exits 1) and the connection keeps
        serving; no warning (a mistyped name is no fault of the daemon's)."""
        with capturedLogs() as events:
            reply = self.send(request("reload", "NOSUCH"), request("ping"))
        self.assertEqual(reply, b"Error: no Task Schedule 'NOSUCH' in MariaDB; nothing to "
                                b"re-plan.\npong\n")
        self.assertEqual(self.control.planned, [])
        self.assertEqual([e for e in events if e["log_level"] != LogLevel.info], [])

    def test_reload_a_name_too_long(self) -> None:
        """A name no schedule can have is refused like create's, without being echoed."""
        self.assertRejected(request("reload", "x" * 20000),
                            "request_content is 20000 characters long; a Task Schedule name"
                            " has at most 140")

    def test_status_counted_later(self) -> None:
        """A status that is read first (a Deferred) is answered when it fires, in order."""
        pending: Deferred[dict[str, object]] = Deferred()
        self.control.status = lambda: pending  # type: ignore[method-assign,assignment,return-value]
        self.assertEqual(self.send(request("status"), request("ping")), b"")
        pending.callback({"members": 1})
        self.assertEqual(self.transport.value(), b'{"members":1}\npong\n')

    def test_reload_waits_then_reports_every_problem(self) -> None:
        """A slow reload holds the next request; a broken file's problems come in one line."""
        from btu_twisted.sources.schedules_file import ScheduleFileError

        pending: Deferred[str] = Deferred()
        self.control.reload_results.append(pending)
        self.assertEqual(self.send(request("reload"), request("ping")), b"")
        pending.errback(ScheduleFileError(["s.toml:2: schedule 'a': cron: bad",
                                           "s.toml:9: schedule 'b': timeout: bad"]))
        self.assertEqual(
            self.transport.value(),
            b"Error: schedules file not reloaded (2 problem(s); the last good schedules keep "
            b"running): s.toml:2: schedule 'a': cron: bad; s.toml:9: schedule 'b': timeout: "
            b"bad\npong\n",
        )

    def test_create(self) -> None:
        """create_task_schedule queues the name and answers with the Rust daemon's text."""
        self.assertEqual(self.send(request("create_task_schedule", TS)), CREATED)
        self.assertEqual(self.control.planned, [TS])
        self.assertFalse(self.transport.disconnecting)

    def test_create_queue_full(self) -> None:
        """A full planning queue is reported; the request was valid, so the connection stays."""
        self.control.accept = False
        reply = self.send(request("create_task_schedule", TS))
        self.assertEqual(
            reply,
            f"Error: the planning queue is full; Task Schedule {TS} was not queued.\n".encode(),
        )
        self.assertFalse(self.transport.disconnecting)

    def test_create_name_of_140_characters(self) -> None:
        """A name as long as Frappe allows (140 characters) is passed on whole;
        the log line shows it shortened, saying how much was cut."""
        name = "S" * 140
        with capturedLogs() as events:
            reply = self.send(request("create_task_schedule", name))
        self.assertEqual(self.control.planned, [name])
        self.assertIn(name.encode(), reply)
        [event] = events
        self.assertEqual(event["schedule"], "S" * 80 + "...[60 more characters]")

    def test_longer_names_are_refused(self) -> None:
        """A name over 140 characters cannot be a schedule: an error line, and
        neither the planner nor the log sees it whole."""
        for request_type in ("create_task_schedule", "cancel_task_schedule"):
            self.connect()
            name = "S" * 10000
            with capturedLogs() as events:
                reply = self.send(request(request_type, name))
            self.assertEqual(
                reply,
                b"Error: request_content is 10000 characters long; a Task Schedule name"
                b" has at most 140\n",
            )
            self.assertTrue(self.transport.disconnecting)
            self.assertTrue(self.control.saw_nothing())
            self.assertEqual(len(events), 1)
            self.assertLess(len(formatEvent(events[0])), 200)

    def test_create_unicode_name(self) -> None:
        """Non-ASCII names travel as UTF-8 both ways."""
        name = "Tâche-été-日本"
        reply = self.send(request("create_task_schedule", name))
        self.assertEqual(self.control.planned, [name])
        self.assertEqual(
            reply, f"BTU Scheduler now re-processing Task Schedule {name} in Python RQ.\n".encode()
        )

    def test_cancel_removed(self) -> None:
        """cancel_task_schedule says it cancelled when a member was removed."""
        self.assertEqual(self.send(request("cancel_task_schedule", TS)), CANCELLED)
        self.assertEqual(self.control.cancelled, [TS])

    def test_cancel_not_scheduled(self) -> None:
        """cancel_task_schedule says so when the schedule had no member."""
        self.control.cancel_results.append(succeed(False))
        self.assertEqual(self.send(request("cancel_task_schedule", TS)), NOT_SCHEDULED)

    def test_cancel_failure(self) -> None:
        """A failed cancel (Redis down) is reported in one line and logged; the connection stays."""
        self.control.cancel_results.append(fail(ConnectionError("Redis is down")))
        reply = self.send(request("cancel_task_schedule", TS))
        self.assertEqual(
            reply,
            f"Error: could not cancel Task Schedule {TS}: ConnectionError: Redis is down\n"
            .encode(),
        )
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        self.assertFalse(self.transport.disconnecting)

    def test_cancel_failure_multiline_message(self) -> None:
        """Only the first line of a failure's message reaches the one-line reply."""
        self.control.cancel_results.append(fail(RuntimeError("first\nsecond")))
        reply = self.send(request("cancel_task_schedule", TS))
        self.assertTrue(reply.endswith(b": RuntimeError: first\n"), reply)
        self.assertEqual(reply.count(b"\n"), 1)
        self.flushLoggedErrors(RuntimeError)


class FramingTests(ProtocolTestCase):
    """Requests end where the object ends or at a newline, however they arrive."""

    STREAM = (
        b"  \n"
        + request("ping")
        + request("create_task_schedule", 'a "quoted" {name} \\ with ]} brackets')
        + b"\r\n"
        + request("cancel_task_schedule", TS)
        + b"\n\n"
        + b'{"request_type":"ping","request_content":{"nested":["}",{"a":"\\\\"}]}}'
    )
    EXPECTED = (
        b"pong\n"
        + b'BTU Scheduler now re-processing Task Schedule a "quoted" {name} \\ with ]} brackets'
        + b" in Python RQ.\n"
        + CANCELLED
        + b"pong\n"
    )

    def test_whole_stream(self) -> None:
        """Several requests in one chunk are answered in order."""
        self.assertEqual(self.send(self.STREAM), self.EXPECTED)

    def test_every_split_point(self) -> None:
        """The stream split in two at every byte boundary gives the same replies."""
        for cut in range(len(self.STREAM) + 1):
            self.connect()
            self.control.planned.clear()
            reply = self.send(self.STREAM[:cut], self.STREAM[cut:])
            self.assertEqual(reply, self.EXPECTED, f"split at {cut}")
            self.assertFalse(self.transport.disconnecting)

    def test_byte_by_byte(self) -> None:
        """One byte per dataReceived call gives the same replies."""
        stream = self.STREAM
        self.assertEqual(self.send(*(stream[i : i + 1] for i in range(len(stream)))), self.EXPECTED)

    def test_reply_as_soon_as_object_ends(self) -> None:
        """Nothing is written before the closing brace, the reply right after it."""
        data = request("ping")
        self.assertEqual(self.send(data[:-1]), b"")
        self.assertEqual(self.send(data[-1:]), b"pong\n")

    def test_two_requests_one_chunk(self) -> None:
        """Two back-to-back objects with no separator are two requests."""
        self.assertEqual(self.send(request("ping") + request("ping")), b"pong\npong\n")

    def test_newline_terminated(self) -> None:
        """Line-oriented clients work: LF and CRLF terminators and blank lines are fine."""
        reply = self.send(b'{"request_type":"ping"}\n\r\n\n{"request_type":"ping"}\r\n')
        self.assertEqual(reply, b"pong\npong\n")
        self.assertFalse(self.transport.disconnecting)

    def test_escaped_quote_at_chunk_end(self) -> None:
        """A backslash at the end of a chunk still escapes the first byte of the next."""
        data = b'{"request_type":"create_task_schedule","request_content":"a\\"}b"}'
        cut = data.index(b'\\"') + 1
        self.assertEqual(self.send(data[:cut]), b"")
        self.assertEqual(
            self.send(data[cut:]),
            b'BTU Scheduler now re-processing Task Schedule a"}b in Python RQ.\n',
        )

    def test_depth_at_limit(self) -> None:
        """Nesting exactly max_depth deep is accepted."""
        data = b'{"request_type":"ping","x":' + b"[" * 31 + b"]" * 31 + b"}"
        self.assertEqual(self.send(data), b"pong\n")

    def test_size_at_limit(self) -> None:
        """A request of exactly max_request_bytes is accepted."""
        head = b'{"request_type":"ping","pad":"'
        data = head + b"x" * (65536 - len(head) - 2) + b'"}'
        self.assertEqual(len(data), 65536)
        self.assertEqual(self.send(data), b"pong\n")

    def test_newline_after_request_at_limit(self) -> None:
        """The newline after a max-size line-oriented request does not count against it."""
        head = b'{"request_type":"ping","pad":"'
        data = head + b"x" * (65536 - len(head) - 2) + b'"}\n'
        self.assertEqual(self.send(data), b"pong\n")


class RejectionTests(ProtocolTestCase):
    """Each bad request gets one error line, then the connection is closed."""

    def test_not_utf8(self) -> None:
        """Bytes that are not UTF-8 are refused (the Rust daemon panicked on them)."""
        data = b'{"request_type":"create_task_schedule","request_content":"\xff\xfe"}'
        self.assertRejected(data, "request is not valid UTF-8")

    def test_not_json(self) -> None:
        """A brace-delimited request that is not JSON is refused with the parser's reason."""
        self.assertRejected(
            b"{request_type: ping}",
            "request is not valid JSON (Expecting property name enclosed in double quotes"
            " at character 1)",
        )

    def test_garbage(self) -> None:
        """Text that cannot start an object is refused at once, without waiting for more."""
        self.assertRejected(b"hello", "request is not a JSON object")

    def test_json_scalar(self) -> None:
        """A JSON scalar is not a request."""
        self.assertRejected(b'"ping"\n', "request is not a JSON object")

    def test_json_array(self) -> None:
        """A JSON array is not a request."""
        self.assertRejected(b'["ping", null]', "request is not a JSON object")

    def test_broken_by_newline(self) -> None:
        """A newline inside an unfinished object ends the request, which is then invalid."""
        with capturedLogs():
            reply = self.send(b'{"request_type":\n"ping"}')
        self.assertTrue(reply.startswith(b"Error: request is not valid JSON"), reply)
        self.assertTrue(self.transport.disconnecting)

    def test_too_deep(self) -> None:
        """Nesting beyond max_depth is refused as soon as it is seen."""
        self.assertRejected(b'{"a":' + b"[" * 32, "request nested deeper than 32 levels")

    def test_request_type_missing(self) -> None:
        """An object without request_type is refused."""
        self.assertRejected(b'{"request_content":"x"}', "request_type is missing or not a string")

    def test_request_type_not_string(self) -> None:
        """request_type must be a string."""
        for value in (None, 5, ["ping"], {"a": 1}):
            self.connect()
            self.assertRejected(request(value), "request_type is missing or not a string")

    def test_unknown_request_type(self) -> None:
        """An unknown request_type is named in the error."""
        self.assertRejected(request("reboot", TS), "unhandled request_type 'reboot'")

    def test_unknown_request_type_echo_is_one_line(self) -> None:
        """A hostile request_type is echoed shortened and on one line."""
        with capturedLogs():
            reply = self.send(request("x\n\u2028" + "y" * 1000))
        self.assertEqual(reply.count(b"\n"), 1)
        self.assertLess(len(reply), 200)
        self.assertTrue(reply.startswith(b"Error: unhandled request_type 'x\\n\\u2028yyy"), reply)

    def test_content_missing(self) -> None:
        """create and cancel need request_content."""
        for request_type in ("create_task_schedule", "cancel_task_schedule"):
            self.connect()
            self.assertRejected(
                json.dumps({"request_type": request_type}).encode(),
                "request_content is missing; a Task Schedule name is required",
            )

    def test_content_null(self) -> None:
        """A null request_content is as good as missing."""
        for request_type in ("create_task_schedule", "cancel_task_schedule"):
            self.connect()
            self.assertRejected(
                request(request_type, None),
                "request_content is missing; a Task Schedule name is required",
            )

    def test_content_not_string(self) -> None:
        """The name must be a string."""
        for request_type in ("create_task_schedule", "cancel_task_schedule"):
            for value in (1, ["TS-1"], {"name": "TS-1"}, True):
                self.connect()
                self.assertRejected(
                    request(request_type, value),
                    "request_content must be a string (a Task Schedule name)",
                )

    def test_content_blank(self) -> None:
        """An empty or whitespace-only name is refused."""
        for request_type in ("create_task_schedule", "cancel_task_schedule"):
            for value in ("", "   ", "\t"):
                self.connect()
                self.assertRejected(
                    request(request_type, value),
                    "request_content is empty; a Task Schedule name is required",
                )

    def test_content_control_characters(self) -> None:
        """A name that would break the one-line reply is refused."""
        for value in ("TS\n1", "TS\x001", "TS\u20281", "TS\ud8001"):
            self.connect()
            self.assertRejected(
                request("create_task_schedule", value),
                "request_content contains control characters",
            )

    def test_oversized_garbage(self) -> None:
        """65 KiB without an end is refused once the buffer passes the limit."""
        self.assertRejected(b"{" + b"a" * (65 * 1024), "request larger than 65536 bytes")

    def test_oversized_complete_request(self) -> None:
        """A complete request one byte over the limit is refused too."""
        head = b'{"request_type":"ping","pad":"'
        data = head + b"x" * (65537 - len(head) - 2) + b'"}'
        self.assertRejected(data, "request larger than 65536 bytes")

    def test_huge_string_in_pieces(self) -> None:
        """A 10 MiB string sent in pieces stops being buffered just past the limit."""
        head = b'{"request_type":"create_task_schedule","request_content":"'
        piece = b"x" * 4096
        with capturedLogs():
            self.protocol.dataReceived(head)
            fed = len(head)
            while not self.transport.disconnecting and fed < 10 * 1024 * 1024:
                self.protocol.dataReceived(piece)
                fed += len(piece)
        self.assertTrue(self.transport.disconnecting)
        self.assertLessEqual(fed, 65536 + len(piece))
        self.assertEqual(self.transport.value(), b"Error: request larger than 65536 bytes\n")
        for _ in range(100):  # the rest of the 10 MiB is dropped, not kept
            self.protocol.dataReceived(piece)
        self.assertEqual(len(self.protocol._framer), 0)
        self.assertTrue(self.control.saw_nothing())

    def test_smaller_limits(self) -> None:
        """max_request_bytes and max_depth come from the factory."""
        self.connect(max_request_bytes=100, max_depth=2)
        self.assertRejected(b"{" + b" " * 100, "request larger than 100 bytes")
        self.connect(max_request_bytes=100, max_depth=2)
        self.assertRejected(b'{"a":[[', "request nested deeper than 2 levels")

    def test_good_requests_before_bad_are_answered(self) -> None:
        """Requests before the bad one in the same chunk still get their replies."""
        with capturedLogs():
            reply = self.send(request("ping") + b"\n" + b"nonsense")
        self.assertEqual(reply, b"pong\nError: request is not a JSON object\n")
        self.assertTrue(self.transport.disconnecting)


class IdleTimeoutTests(ProtocolTestCase):
    """A connection with nothing complete for idle_timeout seconds is closed."""

    def test_silent_client(self) -> None:
        """A client that sends nothing is told so after 30 seconds."""
        self.clock.advance(29.9)
        self.assertEqual(self.transport.value(), b"")
        with capturedLogs() as events:
            self.clock.advance(0.1)
        self.assertEqual(self.transport.value(), b"Error: no complete request within 30 seconds\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])

    def test_slow_client(self) -> None:
        """Trickling bytes does not keep a connection alive without completing a request."""
        for byte in b'{"request_type": "create_task_schedule"':
            self.protocol.dataReceived(bytes([byte]))
            self.clock.advance(1.9)
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(self.transport.value().startswith(b"Error: no complete request"))

    def test_each_request_restarts_timer(self) -> None:
        """A client that keeps sending complete requests is not timed out."""
        for _ in range(5):
            self.clock.advance(20)
            self.protocol.dataReceived(request("ping"))
        self.assertEqual(self.transport.value(), b"pong\n" * 5)
        self.assertFalse(self.transport.disconnecting)

    def test_custom_timeout(self) -> None:
        """idle_timeout comes from the factory."""
        self.connect(idle_timeout=2.5)
        with capturedLogs():
            self.clock.advance(2.5)
        self.assertEqual(self.transport.value(), b"Error: no complete request within 2.5 seconds\n")

    def test_connection_lost_cancels_timer(self) -> None:
        """No delayed call outlives the connection."""
        self.protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PendingReplyTests(ProtocolTestCase):
    """A cancel awaiting Redis holds later replies back, keeping them in order."""

    def setUp(self) -> None:
        super().setUp()
        self.result: Deferred[bool] = Deferred()
        self.control.cancel_results.append(self.result)

    def test_order_kept(self) -> None:
        """Requests behind a pending cancel are answered after it, in order."""
        reply = self.send(request("cancel_task_schedule", TS) + request("ping"), request("ping"))
        self.assertEqual(reply, b"")
        self.assertEqual(self.transport.producerState, "paused")
        self.result.callback(True)
        self.assertEqual(self.transport.value(), CANCELLED + b"pong\npong\n")
        self.assertEqual(self.transport.producerState, "producing")
        self.assertFalse(self.transport.disconnecting)

    def test_chained_pending(self) -> None:
        """A second pending cancel behind the first waits its turn too."""
        second: Deferred[bool] = Deferred()
        self.control.cancel_results.append(second)
        self.send(request("cancel_task_schedule", TS) * 2 + request("ping"))
        self.result.callback(False)
        self.assertEqual(self.transport.value(), NOT_SCHEDULED)
        second.callback(True)
        self.assertEqual(self.transport.value(), NOT_SCHEDULED + CANCELLED + b"pong\n")

    def test_no_idle_timeout_while_pending(self) -> None:
        """The client is waiting on us, not idle; the timer restarts after the reply."""
        self.send(request("cancel_task_schedule", TS))
        self.clock.advance(120)
        self.assertFalse(self.transport.disconnecting)
        self.result.callback(True)
        with capturedLogs():
            self.clock.advance(30)
        self.assertEqual(
            self.transport.value(),
            CANCELLED + b"Error: no complete request within 30 seconds\n",
        )

    def test_error_behind_pending(self) -> None:
        """A bad request behind a pending cancel is answered after the cancel's reply."""
        with capturedLogs():
            self.send(request("cancel_task_schedule", TS), b"junk")
        self.assertEqual(self.transport.value(), b"")
        self.result.callback(True)
        self.assertEqual(
            self.transport.value(), CANCELLED + b"Error: request is not a JSON object\n"
        )
        self.assertTrue(self.transport.disconnecting)

    def test_overflow_behind_pending(self) -> None:
        """Unread bytes behind a pending reply are bounded by max_request_bytes too."""
        with capturedLogs():
            self.send(request("cancel_task_schedule", TS), request("ping") * 5000)
        self.result.callback(True)
        self.assertEqual(
            self.transport.value(), CANCELLED + b"Error: request larger than 65536 bytes\n"
        )

    def test_failure_while_pending(self) -> None:
        """A pending cancel that fails still answers in order."""
        self.send(request("cancel_task_schedule", TS) + request("ping"))
        self.result.errback(TimeoutError("Redis did not answer"))
        self.assertEqual(
            self.transport.value(),
            f"Error: could not cancel Task Schedule {TS}: TimeoutError: Redis did not answer\n"
            "pong\n".encode(),
        )
        self.flushLoggedErrors(TimeoutError)

    def test_client_gone_before_reply(self) -> None:
        """A reply for a client that left is dropped quietly."""
        self.send(request("cancel_task_schedule", TS))
        self.transport.loseConnection()
        self.protocol.connectionLost(Failure(Exception("gone")))
        self.result.callback(True)
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BufferingTransport(StringTransport):
    """A StringTransport that, like Twisted's socket transports, pauses its
    streaming producer once more than ``bound`` bytes wait to be written and
    resumes it when they are flushed."""

    bound = 100

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > self.bound:
            self.producer.pauseProducing()

    def flush(self) -> bytes:
        """The client reads everything buffered."""
        sent = self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return sent


class BackpressureTests(ProtocolTestCase):
    """A client that does not read its replies stops being read."""

    transport_class = BufferingTransport
    transport: BufferingTransport

    def test_registered_as_streaming_producer(self) -> None:
        """The protocol is the transport's push producer from the start."""
        self.assertIs(self.transport.producer, self.protocol)
        self.assertTrue(self.transport.streaming)

    def test_pipelined_requests_wait_while_replies_pile_up(self) -> None:
        """Of 50 pipelined status requests only those whose replies fit are
        handled; reading stops; each flush lets a few more through, all in
        order, none lost."""
        self.send(request("status") * 50)
        first = self.control.status_calls
        self.assertLess(first, 5)
        self.assertEqual(self.transport.producerState, "paused")
        lines: list[bytes] = []
        for _ in range(100):
            lines += self.transport.flush().splitlines()
            if self.control.status_calls == 50:
                break
        lines += self.transport.flush().splitlines()
        self.assertEqual(self.control.status_calls, 50)
        self.assertEqual(len(lines), 50)
        self.assertEqual(len(set(lines)), 1)
        self.assertEqual(self.transport.producerState, "producing")

    def test_pending_cancel_and_full_buffer_both_hold_reading(self) -> None:
        """Reading resumes only when the cancel is answered and the buffer has drained."""
        result: Deferred[bool] = Deferred()
        self.control.cancel_results.append(result)
        self.send(request("status") * 3 + request("cancel_task_schedule", TS) + PING)
        self.assertEqual(self.control.status_calls, 3)
        self.assertEqual(self.control.cancelled, [], "handled despite the full buffer")
        self.transport.flush()
        self.assertEqual(self.control.cancelled, [TS])
        self.transport.producer.pauseProducing()  # the transport fills up again
        result.callback(True)
        self.assertEqual(self.transport.producerState, "paused")
        self.assertNotIn(b"pong", self.transport.value())
        self.assertEqual(self.transport.flush(), CANCELLED)
        self.assertEqual(self.transport.value(), b"pong\n")
        self.assertEqual(self.transport.producerState, "producing")

    def test_client_reading_nothing_is_dropped_after_the_idle_timeout(self) -> None:
        """A connection whose replies stay unread is aborted, not kept forever."""
        self.send(request("status") * 50)
        with capturedLogs() as events:
            self.clock.advance(self.factory.idle_timeout)
        self.assertTrue(self.transport.disconnected)  # aborted
        self.assertIsNone(self.transport.producer)
        self.assertNotIn(b"Error", self.transport.value())
        self.assertIn("read no reply", formatEvent(events[0]))

    def test_error_close_unregisters(self) -> None:
        """Closing with an error line stops being the producer, so the close completes."""
        with capturedLogs():
            self.send(b"nonsense")
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)


class ConnectionLimitTests(ProtocolTestCase):
    """No client can multiply the per-connection bounds without limit."""

    def test_connections_over_the_limit_are_refused(self) -> None:
        """Past max_connections a new connection gets one error line and is
        closed; refusing is logged once, and a closed connection makes room."""
        self.connect(max_connections=2)
        second = self.factory.buildProtocol(None)  # type: ignore[arg-type]
        second.makeConnection(StringTransport())
        with capturedLogs() as events:
            refused = []
            for _ in range(3):
                protocol = self.factory.buildProtocol(None)  # type: ignore[arg-type]
                transport = StringTransport()
                protocol.makeConnection(transport)
                refused.append(transport)
                protocol.connectionLost(Failure(Exception("closed")))
        for transport in refused:
            self.assertEqual(transport.value(), b"Error: too many connections; try again later\n")
            self.assertTrue(transport.disconnecting)
        self.assertEqual(len(events), 1)
        self.assertEqual(self.factory.connections, 2)
        second.transport.loseConnection()  # type: ignore[union-attr]
        with capturedLogs() as events:
            second.connectionLost(Failure(Exception("closed")))
        self.assertEqual(self.factory.connections, 1)
        self.assertEqual(len(events), 1)  # accepting again
        self.assertEqual(self.send(PING), b"pong\n")


class InternalErrorTests(ProtocolTestCase):
    """Exceptions in the control become ``Error: internal error``, never a crash."""

    def assertInternalError(self, data: bytes) -> None:
        self.control.error = RuntimeError("bug")
        self.assertEqual(self.send(data), b"Error: internal error\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_request_planning_raises(self) -> None:
        """request_planning raising is logged and answered."""
        self.assertInternalError(request("create_task_schedule", TS))

    def test_cancel_raises(self) -> None:
        """cancel raising synchronously is logged and answered."""
        self.assertInternalError(request("cancel_task_schedule", TS))

    def test_status_raises(self) -> None:
        """status raising is logged and answered."""
        self.assertInternalError(request("status"))

    def test_status_not_serialisable(self) -> None:
        """A status json.dumps cannot handle (a circular dict) is an internal error."""
        loop: dict[str, object] = {}
        loop["self"] = loop
        self.control.status = lambda: loop  # type: ignore[method-assign]
        self.assertEqual(self.send(request("status")), b"Error: internal error\n")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_cancel_returns_non_deferred(self) -> None:
        """A control that breaks the interface is an internal error, not a hang."""
        self.control.cancel = lambda name: True  # type: ignore[method-assign,assignment]
        self.assertEqual(self.send(request("cancel_task_schedule", TS)), b"Error: internal error\n")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_other_connections_unaffected(self) -> None:
        """After one connection's internal error the factory still serves new ones."""
        self.assertInternalError(request("status"))
        self.control.error = None
        self.connect()
        self.assertEqual(self.send(request("ping")), b"pong\n")


class FactoryTests(SynchronousTestCase):
    """The factory hands its settings to each protocol."""

    def test_defaults(self) -> None:
        """Defaults: 30 s idle, 64 KiB, depth 32."""
        factory = ControlFactory(FakeControl(), Clock())
        self.assertEqual(
            (factory.idle_timeout, factory.max_request_bytes, factory.max_depth), (30.0, 65536, 32)
        )

    def test_builds_protocols(self) -> None:
        """Each connection gets its own protocol bound to the factory."""
        factory = ControlFactory(FakeControl(), Clock())
        first = factory.buildProtocol(None)  # type: ignore[arg-type]
        second = factory.buildProtocol(None)  # type: ignore[arg-type]
        self.assertIsInstance(first, ControlProtocol)
        self.assertIsNot(first, second)
        self.assertIs(first.factory, factory)
