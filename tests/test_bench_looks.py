"""The looks a bench's daemon makes once for all its sites (daemon/bench_looks.py):
one EXISTS for every site's marker, each site's own check only when one is gone;
one EVAL for every site's next due run, a timer woken only for what it did not
know of."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from btu_twisted.daemon.bench_looks import CHUNK, DueWatch, KeyWatch
from btu_twisted.store.scripts import SOONEST_MANY


class FakeRedis:
    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.commands: list[tuple[str, ...]] = []
        self.soonest: dict[str, bytes] = {}
        self.calls: list[list[str]] = []
        self.down = False

    def command(self, *args: str) -> Any:
        self.commands.append(args)
        assert args[0] == "EXISTS"
        return succeed(sum(1 for key in args[1:] if key in self.keys))

    def eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        assert script == SOONEST_MANY and args == []
        self.calls.append(keys)
        if self.down:
            return fail(ConnectionError("Redis went away"))
        return succeed([self.soonest.get(key, b"") for key in keys])


@dataclass
class FakeRefresh:
    running: bool = True
    checks: int = 0

    def check_keys(self) -> None:
        self.checks += 1


@dataclass
class FakeTimer:
    running: int = 1
    knows: float | None = None  # the earliest member its own last look saw
    told: list[float] = field(default_factory=list)

    def seen_soonest(self, when: float) -> bool:
        self.told.append(when)
        return self.knows is None or when < self.knows


@dataclass
class FakeKeys:
    planned_marker: str
    schedule_set: str


@dataclass
class FakeStore:
    keys: FakeKeys


@dataclass
class FakeSite:
    name: str
    running: int = 1
    refresh: FakeRefresh = field(default_factory=FakeRefresh)
    timer: FakeTimer = field(default_factory=FakeTimer)

    @property
    def store(self) -> FakeStore:
        prefix = f"btu_scheduler:{self.name}:"
        return FakeStore(FakeKeys(prefix + "planned", prefix + "schedules"))


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


class DueWatchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = FakeRedis()
        self.sites = [FakeSite(f"s{i}.test") for i in range(CHUNK + 500)]
        self.watch = DueWatch(self.clock, self.redis, lambda: self.sites,  # type: ignore[arg-type]
                              interval=60.0)
        self.watch.start()
        self.addCleanup(self.watch.stop)

    def key(self, index: int) -> str:
        return self.sites[index].store.keys.schedule_set

    def test_one_eval_per_chunk_at_the_polling_interval(self) -> None:
        self.clock.advance(59.9)
        self.assertEqual(self.redis.calls, [])
        self.clock.advance(0.1)
        self.assertEqual([len(keys) for keys in self.redis.calls], [CHUNK, 500])
        self.clock.advance(60)
        self.assertEqual(len(self.redis.calls), 4)

    def test_only_sites_with_a_member_are_told_and_only_the_unknown_wake(self) -> None:
        self.redis.soonest = {self.key(3): b"1700000060", self.key(1200): b"1700000120"}
        self.sites[3].timer.knows = 1700000060.0  # its own look saw it
        self.clock.advance(60)
        told = {site.name: site.timer.told for site in self.sites if site.timer.told}
        self.assertEqual(told, {"s3.test": [1700000060.0], "s1200.test": [1700000120.0]})
        self.assertEqual(self.watch.woken, 1)

    def test_stopped_sites_and_timers_are_not_looked_at(self) -> None:
        self.sites[0].running = 0
        self.sites[1].timer.running = 0
        self.clock.advance(60)
        looked = {key for keys in self.redis.calls for key in keys}
        self.assertNotIn(self.key(0), looked)
        self.assertNotIn(self.key(1), looked)
        self.assertEqual(len(looked), len(self.sites) - 2)

    def test_redis_away_is_one_skipped_look_and_the_next_one_works(self) -> None:
        self.redis.down = True
        self.clock.advance(60)
        self.assertEqual(len(self.redis.calls), 1)  # the rest of that look is skipped
        self.redis.down = False
        self.redis.soonest = {self.key(5): b"1700000000"}
        self.clock.advance(60)
        self.assertEqual(self.sites[5].timer.told, [1700000000.0])
