"""The bench-wide lost-keys watch (daemon/bench_looks.py): one EXISTS for every site,
each site's own check only when a marker is gone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from btu_twisted.daemon.bench_looks import CHUNK, KeyWatch


class FakeRedis:
    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.commands: list[tuple[str, ...]] = []

    def command(self, *args: str) -> Any:
        self.commands.append(args)
        assert args[0] == "EXISTS"
        return succeed(sum(1 for key in args[1:] if key in self.keys))


@dataclass
class FakeRefresh:
    running: bool = True
    checks: int = 0

    def check_keys(self) -> None:
        self.checks += 1


@dataclass
class FakeKeys:
    planned_marker: str


@dataclass
class FakeStore:
    keys: FakeKeys


@dataclass
class FakeSite:
    name: str
    running: int = 1
    refresh: FakeRefresh = field(default_factory=FakeRefresh)

    @property
    def store(self) -> FakeStore:
        return FakeStore(FakeKeys(f"btu_scheduler:{self.name}:planned"))


class KeyWatchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = FakeRedis()
        self.sites = [FakeSite(f"s{i}.test") for i in range(CHUNK + 500)]
        self.redis.keys = {site.store.keys.planned_marker for site in self.sites}
        self.watch = KeyWatch(self.clock, self.redis, lambda: self.sites,  # type: ignore[arg-type]
                              interval=2.0)
        self.watch.start()
        self.addCleanup(self.watch.stop)

    def test_all_keys_there_costs_one_exists_per_chunk_and_no_site_check(self) -> None:
        self.clock.advance(2.0)
        self.assertEqual(len(self.redis.commands), 2)  # 1,500 keys: two chunks
        self.assertEqual(sum(site.refresh.checks for site in self.sites), 0)

    def test_a_lost_marker_makes_every_site_check_its_own(self) -> None:
        self.redis.keys.discard(self.sites[7].store.keys.planned_marker)
        self.clock.advance(2.0)
        self.assertEqual(self.watch.losses, 1)
        self.assertTrue(all(site.refresh.checks == 1 for site in self.sites))

    def test_stopped_sites_are_not_looked_at(self) -> None:
        self.sites[3].running = 0
        self.redis.keys.discard(self.sites[3].store.keys.planned_marker)
        self.clock.advance(2.0)
        self.assertEqual(self.watch.losses, 0)
        names = {key for command in self.redis.commands for key in command[1:]}
        self.assertNotIn(self.sites[3].store.keys.planned_marker, names)
