"""The ``btu`` command's pickle reader: faithful for plain data, inert for everything else."""

from __future__ import annotations

import datetime
import decimal
import os
import pickle
import sys
import tempfile
import zlib

from twisted.trial.unittest import TestCase

from btu_twisted.cli.pickles import (
    MAX_BYTES,
    MAX_NODES,
    PickleSummaryError,
    plain,
    read_job_call,
    summarize,
)


class _Shell:
    """Unpickling this runs a shell command (what a planted job does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


PLAIN_VALUES = [
    None, True, False, 0, -7, 2**70, 1.5, "héllo", b"\x00bytes", (), (1,), (1, 2), (1, 2, 3),
    (1, 2, 3, 4), [], [1, [2, "x"]], {"a": {1: None}}, {1, 2}, frozenset({"f"}),
    datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.UTC),
    datetime.date(2024, 2, 29), datetime.timedelta(days=3, seconds=5), decimal.Decimal("1.25"),
]


class SummarizeTests(TestCase):
    def test_plain_values_round_trip_in_every_protocol(self) -> None:
        """What rq jobs hold (numbers, text, containers, dates) reads back equal, protocols 0-5."""
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            for value in PLAIN_VALUES:
                self.assertEqual(summarize(pickle.dumps(value, protocol=protocol)), value,
                                 (protocol, value))
            shared = [1]
            self.assertEqual(summarize(pickle.dumps([shared, shared], protocol=protocol)),
                             [[1], [1]])

    def test_calls_are_shown_not_made(self) -> None:
        """os.system in a pickle becomes a description with its argument; nothing runs."""
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "ran")
            for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
                data = pickle.dumps({"x": _Shell(f"touch {marker}")}, protocol=protocol)
                shown = plain(summarize(data))
                self.assertEqual(shown, {"x": f"<{os.system.__module__}.system('touch {marker}')>"})
                self.assertFalse(os.path.exists(marker))

    def test_named_modules_are_never_imported(self) -> None:
        """A class from a module that is not loaded stays unloaded."""
        data = b"\x80\x02cbtu_not_loaded_module_x\nThing\n)R."
        self.assertEqual(repr(summarize(data)), "<btu_not_loaded_module_x.Thing()>")
        self.assertNotIn("btu_not_loaded_module_x", sys.modules)

    def test_no_allocation_by_a_planted_number(self) -> None:
        """bytearray(10**12) in a pickle is shown as that call, never made."""
        data = b"\x80\x02c__builtin__\nbytearray\n\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85R."
        self.assertEqual(repr(summarize(data)), f"<builtins.bytearray({10**12})>")

    def test_malformed_and_oversized_input_is_refused(self) -> None:
        """Junk, a truncated pickle and a decompression bomb give PickleSummaryError."""
        for junk in (b"", b"junk", pickle.dumps([1, 2, 3])[:-3]):
            self.assertRaises(PickleSummaryError, summarize, junk)
        bomb = zlib.compress(b"\x00" * (MAX_BYTES + 1))
        self.assertRaises(PickleSummaryError, summarize, bomb)

    def test_shared_lists_cannot_blow_up_the_summary(self) -> None:
        """40 levels of a list holding its child twice (2**40 items walked) stay bounded."""
        data = b"\x80\x02]q\x00K\x01a0"  # memo 0: [1]
        for level in range(40):
            # a new list holding memo[level] twice, kept as memo[level + 1] only
            data += (b"]q" + bytes([level + 1]) + b"(h" + bytes([level]) + b"h" + bytes([level])
                     + b"e0")
        data += b"h\x28."  # the top list, memo[40]
        shown = plain(summarize(data))
        flat = repr(shown)
        self.assertLess(flat.count("1"), MAX_NODES + 1)
        self.assertIn("...", flat)

    def test_read_job_call_reports_unreadable_data(self) -> None:
        """rq's compressed data tuple is read; anything else is a data_error, not an exception."""
        data = zlib.compress(pickle.dumps(("mod.func", None, (1,), {"k": "v"})))
        self.assertEqual(read_job_call(data),
                         {"func_name": "mod.func", "args": [1], "kwargs": {"k": "v"}})
        self.assertIsNone(read_job_call(b"not a pickle")["func_name"])
        self.assertIn("data_error", read_job_call(pickle.dumps("just a string")))
