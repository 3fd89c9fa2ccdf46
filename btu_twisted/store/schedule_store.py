"""Redis keys of the scheduler and the Lua scripts that change them atomically.

Contract keys (DESIGN.md): the sorted set ``btu_scheduler:task_execution_times``
with members ``"<schedule>|<unix>"`` scored by the same unix seconds, and RQ's
own ``rq:job:*``, ``rq:queue:*`` and ``rq:queues``.

Our extensions, both hashes keyed by schedule name:

* ``btu_scheduler:schedule_members`` -> the one member a schedule owns, so that
  replanning replaces it without scanning the set (after a claim it names the
  claimed member, gone from the set, until the replan);
* ``btu_scheduler:last_enqueued`` -> the latest scheduled time already enqueued
  (or deliberately skipped), so no planner, however slow or however many
  daemons there are, can bring back a run that already happened.

Every change that must not be seen half-done is a single script call, which is
what makes claiming exactly-once across daemons and crashes.  Each script starts
with a ``#!lua`` shebang (Redis 7) declaring what it does: those that may add
data are refused up front while Redis is out of memory (not stopped at their
first write, half-done), those that only delete may run then, and the read-only
one says so.  With a shebang every key a script touches must be in KEYS.
The scripts are ``lua/*.lua`` (read by scripts.py), each naming its KEYS,
ARGV and reply; how a claim is framed for CLAIM is claims.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from btu_twisted.store.claims import (
    BLOCKED,
    BLOCKED_RETRY_SECS,
    CLAIMED,
    LOST,
    OVERLAPPED,
    PER_JOB_FIELDS,
    STALE,
    WITHDRAWN,
    Blocked,
    BlockedClaims,
    Claim,
    ClaimWire,
    claim_arguments,
    framed,
    member_for,
    split_member,
)
from btu_twisted.store.history import DEFAULT_LENGTH, FOLD_TEXTS

# The key names live in keys.py (importable without Twisted); store.py still exports them.
from btu_twisted.store.keys import (
    JOB_PREFIX,
    LAST_ENQUEUED,
    MEMBER_INDEX,
    PLANNED_MARKER,
    QUEUE_PREFIX,
    RQ_QUEUES,
    SCHEDULE_SET,
    Keys,
)
from btu_twisted.store.pauses import DEFAULT_LIMIT, PAUSED_RUN, Paused, parse_paused, rq_time
from btu_twisted.store.resp import Encoded, encode, join
from btu_twisted.store.scripts import (
    CANCEL,
    CLAIM,
    CLOSE_LIVES,
    FOLD_HISTORY,
    FORGET_LAST_RUNS,
    LAST_RUN_NAMES,
    PAUSE,
    PAUSED_LIST,
    PLAN,
    PRUNE_INDEX,
    PRUNE_MEMBERS,
    RESUME,
    UNPLAN_IF_OWNED,
    WINDOW,
)

if TYPE_CHECKING:
    from btu_twisted.store.gateway import RedisCommands

# Claims (claims.py), key names (keys.py) and scripts (scripts.py) are still
# importable from here, as they were before the store was split.
__all__ = [
    "BLOCKED", "BLOCKED_RETRY_SECS", "CANCEL", "CLAIM", "CLAIMED", "DEFAULT_KEYS", "FOLD_HISTORY",
    "FORGET_LAST_RUNS", "JOB_PREFIX", "LAST_ENQUEUED", "LAST_RUN_NAMES", "LOST", "MEMBER_INDEX",
    "OVERLAPPED", "PER_JOB_FIELDS", "PLAN", "PLANNED_MARKER", "PLAN_CHUNK", "PRUNE_INDEX",
    "PRUNE_MEMBERS", "QUEUE_PREFIX", "RECENT_SECS", "RQ_QUEUES", "SCAN_PAGE", "SCHEDULE_SET",
    "STALE", "UNPLAN_IF_OWNED", "WINDOW", "WITHDRAWN", "Blocked", "BlockedClaims", "Claim", "ClaimWire",
    "Keys", "ScheduleStore", "Window", "claim_arguments", "framed", "member_for",
    "split_member",
]

DEFAULT_KEYS = Keys()

# How close to now a last run must be to be kept although its schedule seems
# deleted (lua/forget_last_runs.lua holds the same number; a test checks).
RECENT_SECS = 3600

#: Schedules planned (or unplanned) per PLAN call.
PLAN_CHUNK = 200

# Fields (members, names) looked at per page of a scan.
SCAN_PAGE = 500

# The scripts, with what each takes and answers, are lua/*.lua (scripts.py).


@dataclass(frozen=True)
class Window:
    """The sorted set as the timer sees it at one wake-up."""

    count: int
    near: list[tuple[str, int]]
    beyond: tuple[str, int] | None


def _without_shebang(script: str) -> str:
    """The script for Redis before 7.0: its "#!lua" line made a blank one, so
    line numbers in error messages stay the same."""
    return "\n" + script.partition("\n")[2] if script.startswith("#!") else script


class ScheduleStore:
    """The scheduler's Redis operations, each one round trip."""

    log = Logger()

    def __init__(
        self, redis: RedisCommands, keys: Keys = DEFAULT_KEYS,
        history_length: int = DEFAULT_LENGTH,
    ) -> None:
        self._redis = redis
        self.keys = keys
        self.history_length = history_length
        # The keys most scripts take, in their KEYS order.
        self._three = [keys.schedule_set, keys.member_index, keys.last_enqueued]
        # CLAIM's first keys, framed once (the claims' own keys are framed as they are built).
        self._claim_keys = encode((keys.schedule_set, keys.last_enqueued, RQ_QUEUES,
                                   keys.last_job, keys.history_inbox))
        self.blocked = BlockedClaims()
        # Redis before 7.0 reads the "#!lua" line as Lua and fails to compile
        # it; such a server gets the scripts without it (and without flags).
        self._shebangs = True
        # The gateway's up/down state, when it has one (fakes may not).
        self.health = getattr(redis, "health", None)

    async def _eval(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        return await self._scripted(script, lambda text: self._redis.eval(text, keys, args))

    async def evaluate(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        """Another module's script (the status page's reads), with the same
        handling of Redis before 7.0 as this store's own."""
        return await self._eval(script, keys, args)

    async def _eval_encoded(self, script: str, keys: Encoded, args: Encoded) -> Any:
        """:meth:`_eval` of arguments framed ahead of time."""
        return await self._scripted(
            script, lambda text: self._redis.eval_encoded(text, keys, args))

    async def _scripted(self, script: str, send: Callable[[str], Deferred[Any]]) -> Any:
        """``send(script)``, without its shebang on Redis before 7.0."""
        if not self._shebangs:
            return await send(_without_shebang(script))
        try:
            return await send(script)
        except Exception as error:
            text = str(error)
            if "compiling script" not in text or "'#'" not in text:
                raise
        # Nothing ran: the script did not compile.
        self._shebangs = False
        self.log.warn(
            "Redis is older than 7.0: its scripts run without flags, so one that"
            " runs out of memory may stop half-way; Redis 7 refuses it up front"
        )
        return await send(_without_shebang(script))

    async def plan(
        self, now: float, plans: Mapping[str, int], unplans: Iterable[str] = ()
    ) -> dict[str, int]:
        """Give each schedule in ``plans`` exactly that one member (unless its
        current member is already due at ``now``); remove the members of
        ``unplans``.  Returns the schedules whose planned time was not after
        their last enqueued run, with that run's time.

        At most PLAN_CHUNK schedules per script call: each is planned on its
        own, so nothing needs a bigger one, and a smaller one keeps Redis
        free for everyone else (500 took up to 11 ms at 100,000 schedules).
        """
        items = [(name, int(when)) for name, when in plans.items()]
        gone = list(unplans)
        rejected: dict[str, int] = {}
        while items or gone:
            part, items = items[:PLAN_CHUNK], items[PLAN_CHUNK:]
            room = PLAN_CHUNK - len(part)
            drop, gone = gone[:room], gone[room:]
            args: list[object] = [int(now), len(part)]
            for name, when in part:
                args += [name, when]
            args += drop
            reply = await self._eval(PLAN, [*self._three, self.keys.paused], args)
            pairs = [_text(value) for value in reply or []]
            rejected.update(
                (pairs[i], PAUSED_RUN if pairs[i + 1] == "paused" else int(float(pairs[i + 1])))
                for i in range(0, len(pairs), 2)
            )
        return rejected

    async def claim(self, claims: Sequence[Claim], enqueued_at: str) -> list[int]:
        """Claim due members and enqueue their jobs atomically; one result each.

        A claim whose keys hold the wrong type comes back as a :class:`Blocked`
        (== BLOCKED) with its reason, untouched; the others go ahead.
        """
        if not claims:
            return []
        wires: list[ClaimWire] = [
            c.wire or framed(c).wire for c in claims  # type: ignore[misc]
        ]
        keys = join([self._claim_keys, *(w.keys for w in wires)])
        args = claim_arguments(wires, enqueued_at, self.history_length)
        reply = list(await self._eval_encoded(CLAIM, keys, args))
        codes = _text(reply[0])
        if len(codes) != len(claims):
            raise ValueError(f"CLAIM answered {len(codes)} results for {len(claims)} claims")
        reasons = iter(reply[1:])
        results = [
            Blocked(str(next(reasons, "blocked"))) if code == "3" else int(code)
            for code in codes
        ]
        self.blocked.record(claims, results)
        return results

    async def fold_history(self) -> int:
        """File the history inbox's entries under their schedules (history.py),
        a few claim calls' worth per script call, so that none blocks Redis
        for long; returns how many script calls it took."""
        calls = 0
        waiting = 1
        # Bounded: peers may add to the inbox while we file it.
        while waiting and calls < 1000:
            waiting = int(await self._eval(
                FOLD_HISTORY, [self.keys.history_inbox],
                [self.keys.history_base, self.history_length, FOLD_TEXTS],
            ))
            calls += 1
        return calls

    async def prune(
        self,
        enabled: Collection[str],
        existing: Iterable[str] | None = None,
        seen: Callable[[str, str], object] | None = None,
    ) -> list[str]:
        """Remove the members of schedules not in ``enabled`` (and stale or
        unreadable ones); returns the names whose members went.

        One page per script call (see PRUNE_INDEX), so however many schedules
        there are, Redis never stalls on one.  ``seen(name, member)`` is told
        each member the index holds for an enabled schedule, which lets the
        full refresh find the schedules whose member is missing without a
        second pass.  With ``existing`` (the names of every schedule there is,
        enabled or not; those in ``enabled`` may be left out), also forget the
        last runs of schedules not among them, so that deleted schedules leave
        nothing behind; a disabled schedule keeps its last run, which still
        guards its runs if it is enabled again.
        """
        keep = enabled if isinstance(enabled, set | frozenset) else set(enabled)
        keys = [self.keys.schedule_set, self.keys.member_index]
        removed: set[str] = set()
        cursor = "0"
        while True:
            reply = await self._eval(PRUNE_INDEX, keys, [cursor, SCAN_PAGE])
            cursor, live = _text(reply[0]), json.loads(_text(reply[1]))
            removed.update(_text(name) for name in reply[2])
            gone: list[str] = []
            for name, member in zip(live[0::2], live[1::2], strict=False):
                if name not in keep:
                    gone += [name, member]
                elif seen is not None:
                    seen(name, member)
            if gone:
                removed.update(_text(n) for n in await self._eval(UNPLAN_IF_OWNED, keys, gone))
            if cursor == "0":
                break
        while True:
            reply = await self._eval(PRUNE_MEMBERS, keys, [cursor, SCAN_PAGE])
            cursor = _text(reply[0])
            removed.update(_text(name) for name in reply[1])
            if cursor == "0":
                break
        self.blocked.forget(keep)
        if existing is not None:
            # Not keep.union(existing): at 100,000 schedules that is one more
            # set of them all (4 MiB) at the refresh's peak.
            others = existing if isinstance(existing, set | frozenset) else set(existing)
            await self._forget_last_runs(keep, others)
        return sorted(name for name in removed if name)

    async def _forget_last_runs(self, keep: Container[str], others: Container[str]) -> int:
        """Drop the last runs of names in neither ``keep`` nor ``others``, one
        HSCAN page per call."""
        forgotten = 0
        cursor = "0"
        while True:
            last = [self.keys.last_enqueued]
            reply = await self._eval(LAST_RUN_NAMES, last, [cursor, SCAN_PAGE])
            cursor = _text(reply[0])
            gone = [name for name in json.loads(_text(reply[1]))
                    if name not in keep and name not in others]
            if gone:
                keys = [*last, self.keys.last_job, *map(self.keys.history, gone)]
                forgotten += int(await self._eval(FORGET_LAST_RUNS, keys, gone))
            if cursor == "0":
                return forgotten

    async def cancel(self, schedule: str) -> bool:
        removed = await self._eval(CANCEL, self._three[:2], [schedule])
        return int(removed) > 0

    async def pause(self, schedule: str, now: float) -> bool:
        """Pause ``schedule`` (pauses.py): False when it already was."""
        keys = [*self._three[:2], self.keys.paused, self.keys.history_inbox]
        return bool(int(await self._eval(
            PAUSE, keys, [schedule, int(now), rq_time(now), self.history_length])))

    async def resume(self, schedule: str, now: float) -> bool:
        """Lift ``schedule``'s pause: False when it was not paused.  The caller plans it."""
        keys = [self.keys.paused, self.keys.history_inbox]
        return bool(int(await self._eval(
            RESUME, keys, [schedule, int(now), rq_time(now), self.history_length])))

    async def paused(self, limit: int = DEFAULT_LIMIT) -> Paused:
        """Which schedules are paused, since when (about ``limit`` of them at most)."""
        return parse_paused(list(await self._eval(PAUSED_LIST, [self.keys.paused], [limit])))

    async def is_paused(self, schedule: str) -> bool:
        return bool(int(await self._redis.command("HEXISTS", self.keys.paused, schedule)))

    async def close_lives(self, schedules: Sequence[str]) -> int:
        """The schedules were found deleted: drop their history, pause and last job,
        so that a new schedule under the same name starts afresh; returns how
        many had a history or a pause.  Claims not yet filed are filed first."""
        if not schedules:
            return 0
        await self.fold_history()
        keys = [self.keys.paused, self.keys.last_job, *map(self.keys.history, schedules)]
        return int(await self._eval(CLOSE_LIVES, keys, list(schedules)))

    async def earliest(self, limit: int) -> list[tuple[str, int]]:
        """The ``limit`` earliest members with their scores."""
        reply = await self._redis.command(
            "ZRANGE", self.keys.schedule_set, 0, limit - 1, "WITHSCORES"
        )
        flat = list(reply or [])
        return [(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]

    async def discard(self, members: Sequence[str]) -> None:
        """Remove members that no schedule owns (unreadable, no ``|``)."""
        if members:
            await self._redis.command("ZREM", self.keys.schedule_set, *members)

    async def window(self, horizon: float, limit: int) -> Window:
        """Members due by ``horizon`` (at most ``limit``), and the next one after."""
        horizon_arg = f"{horizon:.3f}"
        reply = list(await self._eval(WINDOW, [self.keys.schedule_set], [horizon_arg, limit]))
        beyond = (reply[1], int(float(reply[2]))) if reply[1] else None
        flat = json.loads(reply[3])
        near = [(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
        return Window(int(reply[0]), near, beyond)

    async def count(self) -> int:
        return int(await self._redis.command("ZCARD", self.keys.schedule_set))

    async def mark_planned(self) -> None:
        """Note that a full refresh is (re)planning everything."""
        await self._redis.command("SET", self.keys.planned_marker, "1")

    async def keys_present(self) -> bool:
        """False when the marker a full refresh sets is gone: our keys were lost."""
        return bool(int(await self._redis.command("EXISTS", self.keys.planned_marker)))


def _text(value: bytes | str | int) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
