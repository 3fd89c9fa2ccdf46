"""Handing free heap memory back to the system (heap.py)."""

from __future__ import annotations

import platform

from twisted.trial import unittest

from btu_twisted.ops import heap


class ReleaseTests(unittest.SynchronousTestCase):
    def test_glibc_hands_memory_back(self) -> None:
        """On glibc (this machine, and the Debian and Ubuntu hosts Frappe runs
        on) malloc_trim is found and called; elsewhere it is a no-op."""
        glibc = platform.libc_ver()[0] == "glibc"
        self.assertEqual(heap.release_free_memory(), glibc)
        self.assertEqual(heap.release_free_memory(), glibc)  # looked up once

    def test_no_trim_call_is_a_no_op(self) -> None:
        self.patch(heap, "_looked", True)
        self.patch(heap, "_trim", None)
        self.assertFalse(heap.release_free_memory())
