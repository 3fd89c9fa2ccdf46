"""The schedule FIFO: unique, ordered, waits without polling, bounded."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.logger import capturedLogs
from twisted.trial import unittest

from btu_twisted.fifo import ScheduleFifo


class FifoTests(unittest.TestCase):
    def test_order_and_dedup(self) -> None:
        """Names come out in first-added order, each once however often added."""
        fifo = ScheduleFifo()
        for name in ["b", "a", "b", "c", "a"]:
            self.assertTrue(fifo.add(name))
        self.assertEqual(len(fifo), 3)
        self.assertEqual(fifo.take(10), ["b", "a", "c"])
        self.assertEqual(len(fifo), 0)

    def test_readd_after_take(self) -> None:
        """A name taken out may be queued again."""
        fifo = ScheduleFifo()
        fifo.add("a")
        fifo.take(1)
        fifo.add("a")
        self.assertEqual(fifo.take(5), ["a"])

    def test_waiting_consumer_is_woken(self) -> None:
        """get() on an empty FIFO fires as soon as a name arrives, and the name
        is handed over rather than left waiting."""
        fifo = ScheduleFifo()
        d = fifo.get()
        self.assertNoResult(d)
        fifo.add("TS-1")
        self.assertEqual(self.successResultOf(d), "TS-1")
        self.assertEqual(len(fifo), 0)

    def test_get_when_not_empty(self) -> None:
        """get() fires at once with the oldest name."""
        fifo = ScheduleFifo()
        fifo.extend(["x", "y"])
        self.assertEqual(self.successResultOf(fifo.get()), "x")
        self.assertEqual(fifo.take(5), ["y"])

    def test_cancelled_waiter_gets_nothing(self) -> None:
        """A cancelled get() does not swallow the next name."""
        fifo = ScheduleFifo()
        d = fifo.get()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        fifo.add("a")
        self.assertEqual(fifo.take(5), ["a"])

    def test_discard(self) -> None:
        """discard() removes a waiting name and ignores unknown ones."""
        fifo = ScheduleFifo()
        fifo.extend(["a", "b"])
        fifo.discard("a")
        fifo.discard("zzz")
        self.assertEqual(fifo.take(5), ["b"])

    def test_bound(self) -> None:
        """Beyond the limit new names are refused with one logged error."""
        fifo = ScheduleFifo(max_names=2)
        with capturedLogs() as events:
            refused = fifo.extend(["a", "b", "c", "d", "a"])
        self.assertEqual(refused, 2)
        self.assertEqual(fifo.take(5), ["a", "b"])
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("c", errors[0]["name"])


class LaneTests(unittest.TestCase):
    def test_urgent_names_overtake_a_bulk_refresh(self) -> None:
        """Names added normally (a run just enqueued, a request) are taken
        before the bulk lane a full refresh filled, however long it is."""
        fifo = ScheduleFifo()
        fifo.extend([f"TS-{i}" for i in range(1000)], bulk=True)
        fifo.add("TS-EVERY-SECOND")
        self.assertEqual(fifo.take(3), ["TS-EVERY-SECOND", "TS-0", "TS-1"])
        self.assertEqual(len(fifo), 998)

    def test_urgent_request_moves_a_bulk_name_up_once(self) -> None:
        """A name waiting in bulk and asked for urgently moves to the urgent
        lane and is still queued once; a bulk add leaves an urgent name be."""
        fifo = ScheduleFifo()
        fifo.extend(["A", "B", "C"], bulk=True)
        fifo.add("C")
        fifo.add("A", bulk=True)
        self.assertEqual(len(fifo), 3)
        self.assertEqual(fifo.take(10), ["C", "A", "B"])

    def test_discard_and_limit_cover_both_lanes(self) -> None:
        """discard removes a name from whichever lane holds it; the limit counts both."""
        fifo = ScheduleFifo(max_names=3)
        fifo.extend(["A", "B"], bulk=True)
        fifo.add("C")
        self.assertFalse(fifo.add("D"))
        fifo.discard("B")
        fifo.discard("C")
        self.assertNotIn("B", fifo)
        self.assertEqual(fifo.take(10), ["A"])
