"""The fake store against the table of store cases (tests/store_cases.py).

The same table runs against the real scripts in
tests/integration/test_store_cases.py: a script change the fake does not
follow fails one of the two.
"""

from __future__ import annotations

import time

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.fakes import FakeStore
from tests.store_cases import Case, answer_as_expected, fake_state, register, seed_fake


class FakeStoreCases(unittest.TestCase):
    async def check(self, case: Case) -> None:
        clock = Clock()
        now = time.time()
        clock.advance(now)  # the real FORGET_LAST_RUNS reads Redis's clock
        store = FakeStore(clock)
        store.history_length = case.history_length
        seed_fake(store, case.before, now)
        await answer_as_expected(self, store, case)
        self.assertEqual(fake_state(store, now), case.after or case.before)


register(FakeStoreCases, FakeStoreCases.check, fake=True)
