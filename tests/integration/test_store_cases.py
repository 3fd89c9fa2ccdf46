"""The real scripts against the table of store cases (tests/store_cases.py).

Each case runs on a redis-server of this test's own (a free port, nothing
persisted), so no other test's keys are in the way.  The same table runs
against the fake store in tests/test_store_cases.py.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from twisted.internet import reactor
from twisted.trial import unittest

from btu_twisted.store.gateway import RedisGateway
from btu_twisted.store.schedule_store import ScheduleStore
from tests.integration.redis_servers import server_directory, start_server
from tests.store_cases import (
    INDEX,
    KEYS,
    LAST,
    LAST_JOB,
    PAUSED_KEY,
    ZSET,
    Case,
    State,
    answer_as_expected,
    register,
    resolve,
    unresolve,
)

HISTORY = KEYS.history("")


def _text(value: bytes) -> str:
    return value.decode()


def seed(sync: redis.Redis, state: State, now: float) -> None:
    """Write ``state`` into Redis."""
    if state.members:
        sync.zadd(ZSET, dict(state.members))
    for key, mapping in ((INDEX, state.index), (LAST_JOB, state.last_job),
                         (PAUSED_KEY, state.paused),
                         (LAST, {k: resolve(v, now) for k, v in state.last.items()}),
                         *((f"rq:job:{k}", v) for k, v in state.jobs.items())):
        if mapping:
            sync.hset(key, mapping=dict(mapping))
    for key, items in (*state.queues.items(),
                       *((HISTORY + k, v) for k, v in state.history.items())):
        sync.rpush(key, *items)
    if state.rq_queues:
        sync.sadd("rq:queues", *state.rq_queues)
    for key, text in state.strings.items():
        sync.set(key, text)
    for key, kind in state.wrong.items():
        command = {"string": ("SET", key, "x"), "list": ("RPUSH", key, "x"),
                   "set": ("SADD", key, "x"), "hash": ("HSET", key, "f", "x"),
                   "zset": ("ZADD", key, 1, "x")}[kind]
        sync.execute_command(*command)


def snapshot(sync: redis.Redis, wrong: set[str], now: float) -> State:
    """Every key in Redis, as a State; a key no field takes fails the test."""
    found: dict[str, Any] = {"members": {}, "index": {}, "last": {}, "last_job": {}, "jobs": {},
                             "queues": {}, "rq_queues": frozenset(), "history": {},
                             "strings": {}, "wrong": {}, "paused": {}}
    for raw in sorted(sync.keys("*")):
        key = _text(raw)
        kind = _text(sync.type(key))
        if key in wrong:
            found["wrong"][key] = kind
        elif key == ZSET:
            found["members"] = {_text(m): int(s) for m, s in sync.zrange(key, 0, -1,
                                                                         withscores=True)}
        elif key in (INDEX, LAST, LAST_JOB, PAUSED_KEY):
            values = {_text(k): _text(v) for k, v in sync.hgetall(key).items()}
            if key == LAST:
                values = {k: unresolve(v, now) for k, v in values.items()}
            found[{INDEX: "index", LAST: "last", LAST_JOB: "last_job",
                   PAUSED_KEY: "paused"}[key]] = values
        elif key.startswith("rq:job:"):
            found["jobs"][key[7:]] = {_text(k): _text(v) for k, v in sync.hgetall(key).items()}
        elif key.startswith("rq:queue:"):
            found["queues"][key] = [_text(v) for v in sync.lrange(key, 0, -1)]
        elif key == "rq:queues":
            found["rq_queues"] = frozenset(_text(v) for v in sync.smembers(key))
        elif key.startswith(HISTORY):
            found["history"][key[len(HISTORY):]] = [_text(v) for v in sync.lrange(key, 0, -1)]
        elif kind == "string":
            found["strings"][key] = _text(sync.get(key))
        else:
            raise AssertionError(f"unexpected key {key} ({kind})")
    return State(**found)


class RealStoreCases(unittest.TestCase):
    async def check(self, case: Case) -> None:
        server = await start_server(self, server_directory(self), "cases")
        sync = server.client()
        self.addCleanup(sync.close)
        gateway = RedisGateway(reactor, "127.0.0.1", server.port)
        gateway.start()
        self.addCleanup(gateway.stop)
        store = ScheduleStore(gateway, history_length=case.history_length)
        now = time.time()
        seed(sync, case.before, now)
        await answer_as_expected(self, store, case)
        await store.fold_history()  # the fake files its history at once
        after = case.after or case.before
        self.assertEqual(snapshot(sync, set(case.before.wrong) | set(after.wrong), now), after)


register(RealStoreCases, RealStoreCases.check, fake=False)
