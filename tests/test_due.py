"""The timer's queue of prepared claims: by due second, then by member."""

from __future__ import annotations

from twisted.trial import unittest

from btu_twisted.store.schedule_store import Claim
from btu_twisted.timing.due import DueClaims


def claim(name: str, when: int) -> Claim:
    return Claim(member=f"{name}|{when}", schedule=name, when=when)


class DueClaimsTests(unittest.SynchronousTestCase):
    def test_by_second_then_member_whatever_the_order_added(self) -> None:
        """Claims come out earliest second first, by member within a second,
        at most ``size`` at a time, none due after ``now``."""
        due = DueClaims()
        for name, when in (("C", 20), ("B", 10), ("A", 20), ("D", 10), ("A", 30)):
            due.add(claim(name, when))

        def everything(_: Claim) -> bool:
            return True

        self.assertEqual(due.soonest(everything), 10)
        self.assertEqual([c.member for c in due.take(25, 3, everything)],
                         ["B|10", "D|10", "A|20"])
        self.assertEqual([c.member for c in due.take(25, 3, everything)], ["C|20"])
        self.assertEqual(due.take(25, 3, everything), [])
        self.assertEqual(due.soonest(everything), 30)

    def test_unwanted_are_skipped_and_a_claim_may_come_back(self) -> None:
        """Entries the caller no longer wants are passed over; a claim added
        again (its call failed) is handed out again, in order."""
        due = DueClaims()
        a, b, c = claim("A", 10), claim("B", 10), claim("C", 10)
        for x in (a, b, c):
            due.add(x)
        self.assertEqual(due.take(10, 5, lambda x: x is not b), [a, c])
        self.assertIsNone(due.soonest(lambda x: True))
        due.add(c)
        due.add(a)
        self.assertEqual(due.soonest(lambda x: True), 10)
        self.assertEqual(due.take(10, 5, lambda x: True), [a, c])
