"""One table of cases per store script: the truth both stores are held to.

:class:`tests.fakes.FakeStore` re-states the Lua scripts in Python so that the
timer and planner tests need no Redis.  Each case here is a state of the keys,
one store call and what it must answer and leave behind; it runs against the
real scripts on a private redis-server (tests/integration/test_store_cases.py)
and against the fake (tests/test_store_cases.py), so a script change that the
fake does not follow fails a test.

The prefix lease (lua/take.lua, lua/release.lua) has no fake: its cases run on
Redis only, where they cost a few milliseconds (``fake=False``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from btu_twisted.store.claims import BLOCKED, CLAIMED, LOST, OVERLAPPED, STALE, WITHDRAWN, Claim
from btu_twisted.store.history import (
    ENQUEUED,
    PAUSED,
    RESUMED,
    SKIPPED_MISFIRE,
    SKIPPED_OVERLAP,
    encode_run,
)
from btu_twisted.store.keys import Keys
from btu_twisted.store.pauses import PAUSED_RUN, Paused, rq_time
from btu_twisted.store.schedule_store import PLAN_CHUNK, Window
from btu_twisted.store.scripts import RELEASE, SOONEST_MANY, TAKE, TAKE_MANY

if TYPE_CHECKING:
    from tests.fakes import FakeStore

KEYS = Keys()
ZSET, INDEX, LAST, LAST_JOB = (KEYS.schedule_set, KEYS.member_index, KEYS.last_enqueued,
                               KEYS.last_job)
OWNER = KEYS.owner
OTHER_OWNER = Keys("btu_scheduler:other.example.com:").owner
OTHER_ZSET = Keys("btu_scheduler:other.example.com:").schedule_set
PAUSED_KEY = KEYS.paused
QUEUE, OTHER_QUEUE = "rq:queue:default", "rq:queue:other"
AT = "2027-01-15T08:00:00.000000Z"  # the claims' enqueued_at
#: A last run within RECENT_SECS of the store's clock, resolved when a case runs.
RECENT = "<recent>"
OLD = "1000"  # a last run long ago


@dataclass(frozen=True)
class State:
    """The keys the scripts read and write; what a case starts from and leaves."""

    members: Mapping[str, int] = field(default_factory=dict)  # the sorted set
    index: Mapping[str, str] = field(default_factory=dict)
    last: Mapping[str, str] = field(default_factory=dict)  # texts: may be unreadable
    last_job: Mapping[str, str] = field(default_factory=dict)
    jobs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    queues: Mapping[str, Sequence[str]] = field(default_factory=dict)
    rq_queues: frozenset[str] = frozenset()
    history: Mapping[str, Sequence[str]] = field(default_factory=dict)  # newest first
    strings: Mapping[str, str] = field(default_factory=dict)  # the lease
    paused: Mapping[str, str] = field(default_factory=dict)  # name -> unix seconds paused
    wrong: Mapping[str, str] = field(default_factory=dict)  # key -> the type it holds

    def but(self, **changes: Any) -> State:
        return State(**{**self.__dict__, **changes})


@dataclass(frozen=True)
class Case:
    name: str
    before: State
    call: tuple[Any, ...]  # (method, *arguments); see tests.store_cases.run
    reply: Any = None
    after: State | None = None  # None: as before
    error: str = ""  # the call fails with this in its message, having written nothing
    history_length: int = 100
    fake: bool = True  # False: Redis only (the docstring says why)


def claim(name: str, when: int, job_id: str = "", origin: str = "default",
          overlap: bool = False, outcome: str = "", member: str | None = None) -> Claim:
    return Claim(member=member or f"{name}|{when}", schedule=name, when=when, job_id=job_id,
                 origin=origin, fields={"status": "queued", "origin": origin} if job_id else None,
                 overlap=overlap, outcome=outcome)


def job(origin: str = "default") -> dict[str, str]:
    return {"status": "queued", "origin": origin, "enqueued_at": AT}


def entry(when: int, job_id: str, outcome: str) -> str:
    return encode_run(when, AT, job_id, outcome)


def blocked(reason: str) -> tuple[int, str]:
    return (BLOCKED, reason)


A1 = State(members={"A|2000": 2000}, index={"A": "A|2000"})
AB = State(members={"A|2000": 2000, "B|2000": 2000}, index={"A": "A|2000", "B": "B|2000"})
ENQUEUED_A = State(index={"A": "A|2000"}, last={"A": "2000"}, jobs={"J1": job()},
                   queues={QUEUE: ["J1"]}, rq_queues=frozenset({QUEUE}),
                   history={"A": [entry(2000, "J1", ENQUEUED)]})
BUSY = State(last_job={"A": "J0"}, jobs={"J0": {"status": "started"}})
MANY = {f"TS-{i:03}": 3000 + i for i in range(PLAN_CHUNK + 50)}

PLAN_CASES = [
    Case("plan_new", State(), ("plan", 1000, {"A": 2000, "B": 2000}), {},
         AB.but(members={"A|2000": 2000, "B|2000": 2000})),
    Case("plan_nothing", AB, ("plan", 1000, {}, []), {}),
    Case("plan_replaces_the_member", A1, ("plan", 1000, {"A": 3000}), {},
         State(members={"A|3000": 3000}, index={"A": "A|3000"})),
    Case("plan_keeps_a_due_member", A1, ("plan", 2000, {"A": 3000}), {}),
    Case("plan_refused_at_or_before_the_last_run", State(last={"A": "2000"}),
         ("plan", 1000, {"A": 2000, "B": 2001}), {"A": 2000},
         State(members={"B|2001": 2001}, index={"B": "B|2001"}, last={"A": "2000"})),
    Case("plan_with_an_unreadable_last_run", State(last={"A": "soon"}),
         ("plan", 1000, {"A": 2000}), {}, A1.but(last={"A": "soon"})),
    Case("plan_unplans", AB, ("plan", 1000, {}, ["A", "GONE"]), {},
         State(members={"B|2000": 2000}, index={"B": "B|2000"})),
    Case("plan_in_chunks", State(last={"TS-007": "9000"}), ("plan", 1000, MANY),
         {"TS-007": 9000},
         State(members={f"{n}|{w}": w for n, w in MANY.items() if n != "TS-007"},
               index={n: f"{n}|{w}" for n, w in MANY.items() if n != "TS-007"},
               last={"TS-007": "9000"})),
    Case("plan_wrong_type_fails_before_writing", State(wrong={INDEX: "string"}),
         ("plan", 1000, {"A": 2000}), error=f"WRONGTYPE {INDEX} holds a string, not a hash"),
    Case("plan_leaves_a_paused_schedule_out", AB.but(paused={"A": "900"}),
         ("plan", 1000, {"A": 3000, "B": 3000}), {"A": PAUSED_RUN},
         State(members={"B|3000": 3000}, index={"B": "B|3000"}, paused={"A": "900"})),
    Case("plan_paused_wrong_type_fails_before_writing", State(wrong={PAUSED_KEY: "string"}),
         ("plan", 1000, {"A": 2000}),
         error=f"WRONGTYPE {PAUSED_KEY} holds a string, not a hash"),
]


def noted(when: int, outcome: str) -> str:
    """A pause's or resume's history entry at unix ``when``."""
    return encode_run(when, rq_time(when), None, outcome)


PAUSE_CASES = [
    Case("pause_removes_the_member_and_notes_it", AB, ("pause", "A", 1500), True,
         State(members={"B|2000": 2000}, index={"B": "B|2000"}, paused={"A": "1500"},
               history={"A": [noted(1500, PAUSED)]})),
    Case("pause_twice_changes_nothing", State(paused={"A": "1500"}), ("pause", "A", 1600), False),
    Case("pause_without_history", A1, ("pause", "A", 1500), True, State(paused={"A": "1500"}),
         history_length=0),
    Case("resume_lifts_the_pause_and_notes_it",
         State(paused={"A": "1500"}, history={"A": [noted(1500, PAUSED)]}),
         ("resume", "A", 1700), True,
         State(history={"A": [noted(1700, RESUMED), noted(1500, PAUSED)]})),
    Case("resume_not_paused", A1, ("resume", "A", 1700), False),
    Case("paused_lists_them", State(paused={"A": "1500", "B": "1600"}), ("paused",),
         Paused(2, {"A": 1500, "B": 1600})),
    Case("paused_none", State(), ("paused",), Paused()),
    Case("close_lives_drops_history_pause_and_last_job",
         State(paused={"A": "1500"}, last={"A": OLD, "B": OLD}, last_job={"A": "J1", "B": "J2"},
               history={"A": ["a"], "B": ["b"]}),
         ("close_lives", ["A", "GONE"]), 1,
         State(last={"A": OLD, "B": OLD}, last_job={"B": "J2"}, history={"B": ["b"]})),
]

CLAIM_CASES = [
    Case("claim_enqueues", A1, ("claim", [claim("A", 2000, "J1")]), [CLAIMED], ENQUEUED_A),
    Case("claim_nothing", A1, ("claim", []), []),
    # The member gone: taken when its time is the last run (another daemon's
    # claim), withdrawn otherwise (a cancel or a replan, ours).
    Case("claim_lost", State(last={"A": "2000"}), ("claim", [claim("A", 2000, "J1")]), [LOST],
         State(last={"A": "2000"})),
    Case("claim_lost_to_a_later_run", State(last={"A": "2060"}),
         ("claim", [claim("A", 2000, "J1")]), [LOST], State(last={"A": "2060"})),
    Case("claim_withdrawn", State(), ("claim", [claim("A", 2000, "J1")]), [WITHDRAWN]),
    Case("claim_withdrawn_after_an_earlier_run",
         State(members={"A|2060": 2060}, index={"A": "A|2060"}, last={"A": "1940"}),
         ("claim", [claim("A", 2000, "J1")]), [WITHDRAWN],
         State(members={"A|2060": 2060}, index={"A": "A|2060"}, last={"A": "1940"})),
    Case("claim_twice_in_one_call", A1,
         ("claim", [claim("A", 2000, "J1"), claim("A", 2000, "J2")]), [CLAIMED, LOST],
         ENQUEUED_A),
    Case("claim_stale", A1.but(last={"A": "2000"}), ("claim", [claim("A", 2000, "J1")]),
         [STALE], State(index={"A": "A|2000"}, last={"A": "2000"})),
    Case("claim_without_a_job", A1,
         ("claim", [claim("A", 2000, outcome=SKIPPED_MISFIRE), claim("B", 2000, member="B|2000")]),
         [CLAIMED, WITHDRAWN],
         State(index={"A": "A|2000"}, last={"A": "2000"},
               history={"A": [entry(2000, "", SKIPPED_MISFIRE)]})),
    Case("claim_without_a_job_or_outcome", A1, ("claim", [claim("A", 2000)]), [CLAIMED],
         State(index={"A": "A|2000"}, last={"A": "2000"},
               history={"A": [entry(2000, "", "skipped")]})),
    Case("claim_overlap_busy", BUSY.but(members=A1.members, index=A1.index),
         ("claim", [claim("A", 2000, "J1", overlap=True)]), [OVERLAPPED],
         BUSY.but(index={"A": "A|2000"}, last={"A": "2000"},
                  history={"A": [entry(2000, "", SKIPPED_OVERLAP)]})),
    Case("claim_overlap_free", A1.but(last_job={"A": "J0"}, jobs={"J0": {"status": "finished"}}),
         ("claim", [claim("A", 2000, "J1", overlap=True)]), [CLAIMED],
         ENQUEUED_A.but(last_job={"A": "J1"}, jobs={"J0": {"status": "finished"}, "J1": job()})),
    Case("claim_overlap_within_one_call",
         State(members={"A|2000": 2000, "A|2060": 2060}, index={"A": "A|2060"}),
         ("claim", [claim("A", 2000, "J1", overlap=True), claim("A", 2060, "J2", overlap=True)]),
         [CLAIMED, OVERLAPPED],
         ENQUEUED_A.but(index={"A": "A|2060"}, last={"A": "2060"}, last_job={"A": "J1"},
                        history={"A": [entry(2060, "", SKIPPED_OVERLAP),
                                       entry(2000, "J1", ENQUEUED)]})),
    Case("claim_overlap_busy_needs_no_job_key", A1.but(
            last_job={"A": "J0"}, jobs={"J0": {"status": "queued"}},
            wrong={"rq:job:J1": "string"}),
         ("claim", [claim("A", 2000, "J1", overlap=True)]), [OVERLAPPED],
         State(index={"A": "A|2000"}, last={"A": "2000"}, last_job={"A": "J0"},
               jobs={"J0": {"status": "queued"}}, wrong={"rq:job:J1": "string"},
               history={"A": [entry(2000, "", SKIPPED_OVERLAP)]})),
    Case("claim_blocked_by_its_queue_only", AB.but(wrong={QUEUE: "string"}),
         ("claim", [claim("A", 2000, "J1"), claim("B", 2000, "J2", origin="other")]),
         [blocked(f"{QUEUE} holds a string, not a list"), CLAIMED],
         State(members={"A|2000": 2000}, index=AB.index, last={"B": "2000"},
               jobs={"J2": job("other")}, queues={OTHER_QUEUE: ["J2"]},
               rq_queues=frozenset({OTHER_QUEUE}), wrong={QUEUE: "string"},
               history={"B": [entry(2000, "J2", ENQUEUED)]})),
    Case("claim_blocked_by_rq_queues_not_without_a_job", AB.but(wrong={"rq:queues": "list"}),
         ("claim", [claim("A", 2000, "J1"), claim("B", 2000)]),
         [blocked("rq:queues holds a list, not a set"), CLAIMED],
         State(members={"A|2000": 2000}, index=AB.index, last={"B": "2000"},
               wrong={"rq:queues": "list"}, history={"B": [entry(2000, "", "skipped")]})),
    Case("claim_blocked_by_its_job_key", A1.but(wrong={"rq:job:J1": "set"}),
         ("claim", [claim("A", 2000, "J1")]), [blocked("rq:job:J1 holds a set, not a hash")]),
    Case("claim_stale_blocked_by_its_job_key",
         A1.but(last={"A": "2000"}, wrong={"rq:job:J1": "string"}),
         ("claim", [claim("A", 2000, "J1")]), [blocked("rq:job:J1 holds a string, not a hash")]),
    Case("claim_blocked_by_an_unreadable_last_run", A1.but(last={"A": "soon"}),
         ("claim", [claim("A", 2000, "J1")]),
         [blocked(f'{LAST} field A holds "soon", not a unix time')]),
    Case("claim_every_code_in_one_call",
         State(members={"A|2000": 2000, "B|2000": 2000, "C|2000": 2000, "D|2000": 2000},
               index={"A": "A|2000", "B": "B|2000", "C": "C|2000", "D": "D|2000"},
               last={"B": "2000"}, last_job={"D": "J0"}, jobs={"J0": {"status": "started"}},
               wrong={OTHER_QUEUE: "hash"}),
         ("claim", [claim("A", 2000, "J1"), claim("B", 2000, "J2"), claim("E", 2000, "J3"),
                    claim("C", 2000, "J4", origin="other"),
                    claim("D", 2000, "J5", overlap=True)]),
         [CLAIMED, STALE, WITHDRAWN, blocked(f"{OTHER_QUEUE} holds a hash, not a list"),
          OVERLAPPED],
         State(members={"C|2000": 2000},
               index={"A": "A|2000", "B": "B|2000", "C": "C|2000", "D": "D|2000"},
               last={"A": "2000", "B": "2000", "D": "2000"}, last_job={"D": "J0"},
               jobs={"J0": {"status": "started"}, "J1": job()}, queues={QUEUE: ["J1"]},
               rq_queues=frozenset({QUEUE}), wrong={OTHER_QUEUE: "hash"},
               history={"A": [entry(2000, "J1", ENQUEUED)],
                        "D": [entry(2000, "", SKIPPED_OVERLAP)]})),
    Case("claim_history_trimmed", A1.but(history={"A": ["old-1", "old-2"]}),
         ("claim", [claim("A", 2000)]), [CLAIMED],
         State(index={"A": "A|2000"}, last={"A": "2000"},
               history={"A": [entry(2000, "", "skipped"), "old-1"]}),
         history_length=2),
    Case("claim_wrong_type_of_last_jobs_fails_before_writing",
         A1.but(wrong={LAST_JOB: "string"}), ("claim", [claim("A", 2000, "J1")]),
         error=f"WRONGTYPE {LAST_JOB} holds a string, not a hash"),
]

PRUNE_CASES = [
    Case("prune_nothing", State(), ("prune", []), ([], [])),
    Case("prune_disabled_stale_garbage_dangling",
         State(members={"A|2000": 2000, "B|2000": 2000, "A|1000": 1000, "garbage": 5,
                        "C|3000": 3000, "|4000": 4000},
               index={"A": "A|2000", "B": "B|2000", "D": "D|999"}),
         ("prune", ["A", "C", "D"]), (["A", "B", "C", "D"], [("A", "A|2000")]), A1),
    Case("prune_forgets_last_runs_of_deleted_schedules",
         A1.but(last={"A": OLD, "KEPT": OLD, "GONE": OLD, "NEW": RECENT, "ODD": "x"},
                last_job={"GONE": "J9", "KEPT": "J8"},
                history={"GONE": ["g"], "KEPT": ["k"]}),
         ("prune", ["A"], ["A", "KEPT"]), ([], [("A", "A|2000")]),
         A1.but(last={"A": OLD, "KEPT": OLD, "NEW": RECENT}, last_job={"KEPT": "J8"},
                history={"KEPT": ["k"]})),
]

CANCEL_CASES = [
    Case("cancel_exact_name",
         State(members={"TS-1|2000": 2000, "TS-10|2000": 2000},
               index={"TS-1": "TS-1|2000", "TS-10": "TS-10|2000"}),
         ("cancel", "TS-1"), True,
         State(members={"TS-10|2000": 2000}, index={"TS-10": "TS-10|2000"})),
    Case("cancel_unknown", A1, ("cancel", "B"), False),
    Case("cancel_leaves_an_unindexed_member", State(members={"A|2000": 2000}),
         ("cancel", "A"), False),
]

READ_CASES = [
    Case("window", State(members={"A|1000": 1000, "B|2000": 2000, "C|3000": 3000}),
         ("window", 2000, 10), Window(3, [("A|1000", 1000), ("B|2000", 2000)], ("C|3000", 3000))),
    Case("window_limited", State(members={"A|1000": 1000, "B|2000": 2000, "C|3000": 3000}),
         ("window", 2500.5, 1), Window(3, [("A|1000", 1000)], ("C|3000", 3000))),
    Case("window_empty", State(), ("window", 2000, 10), Window(0, [], None)),
    # A bench's one look at every site's next due run (daemon/bench_looks.py); the
    # second set (another site's) is missing.
    Case("soonest_many_reads_each_sets_earliest_score",
         State(members={"B|2000": 2000, "A|1000": 1000}), ("soonest_many",), ["1000", ""],
         fake=False),
    Case("earliest", State(members={"B|1000": 1000, "A|1000": 1000, "C|3000": 3000}),
         ("earliest", 2), [("A|1000", 1000), ("B|1000", 1000)]),
]

LEASE_CASES = [
    Case("take_a_free_lease", State(), ("take", "db1", "site1", 30000), "",
         State(strings={OWNER: "db1 site1"}), fake=False),
    Case("take_our_own_lease", State(strings={OWNER: "db1 old-name"}),
         ("take", "db1", "site1", 30000), "", State(strings={OWNER: "db1 site1"}), fake=False),
    Case("take_refused_for_another_site", State(strings={OWNER: "db2 site2"}),
         ("take", "db1", "site1", 30000), "db2 site2", fake=False),
    Case("release_our_lease", State(strings={OWNER: "db1 site1"}), ("release", "db1"), 1,
         State(), fake=False),
    Case("release_not_another_sites", State(strings={OWNER: "db2 site2"}),
         ("release", "db1"), 0, fake=False),
    # A bench's one renewal: each lease as take.lua would, another site's left alone.
    Case("take_many_renews_ours_and_names_another_sites",
         State(strings={OWNER: "db1 site1", OTHER_OWNER: "db9 site9"}),
         ("take_many", "db1", "site1", 30000, "db2", "site2", 30000), ["", "db9 site9"],
         State(strings={OWNER: "db1 site1", OTHER_OWNER: "db9 site9"}), fake=False),
    Case("take_many_takes_free_leases", State(),
         ("take_many", "db1", "site1", 30000, "db2", "site2", 30000), ["", ""],
         State(strings={OWNER: "db1 site1", OTHER_OWNER: "db2 site2"}), fake=False),
]

CASES = (PLAN_CASES + CLAIM_CASES + PRUNE_CASES + CANCEL_CASES + PAUSE_CASES + READ_CASES
         + LEASE_CASES)


async def run(store: Any, call: tuple[Any, ...]) -> Any:
    """The store's answer to ``call``, in the form the cases give it."""
    method, *args = call
    if method == "claim":
        results = await store.claim(args[0], AT)
        return [(r, r.reason) if r == BLOCKED else int(r) for r in results]
    if method == "take_many":
        reply = await store.evaluate(TAKE_MANY, [OWNER, OTHER_OWNER], args)
        return [r.decode() if isinstance(r, bytes) else r for r in reply]
    if method == "soonest_many":
        reply = await store.evaluate(SOONEST_MANY, [ZSET, OTHER_ZSET], args)
        return [r.decode() if isinstance(r, bytes) else r for r in reply]
    if method in ("take", "release"):
        reply = await store.evaluate(TAKE if method == "take" else RELEASE, [OWNER], args)
        return reply.decode() if isinstance(reply, bytes) else reply
    if method == "prune":
        seen: list[tuple[str, str]] = []
        existing = args[1] if len(args) > 1 else None
        removed = await store.prune(set(args[0]), existing, lambda n, m: seen.append((n, m)))
        return (list(removed), sorted(seen))
    return await getattr(store, method)(*args)


async def answer_as_expected(test: Any, store: Any, case: Case) -> None:
    """The store answers ``case.call`` with ``case.reply``, or fails saying ``case.error``:
    the same check for the real scripts and the fake."""
    if case.error:
        with test.assertRaises(Exception) as caught:
            await run(store, case.call)
        test.assertIn(case.error, str(caught.exception))
    else:
        test.assertEqual(await run(store, case.call), case.reply)


def resolve(text: str, now: float) -> str:
    return str(int(now) - 60) if text == RECENT else text


def unresolve(text: str, now: float) -> str:
    return RECENT if text == str(int(now) - 60) else text


def seed_fake(store: FakeStore, state: State, now: float) -> None:
    """Put ``state`` into the fake's dicts."""
    store.zset.update(state.members)
    store.index.update(state.index)
    for name, text in state.last.items():
        value = resolve(text, now)
        store.last_enqueued[name] = int(value) if value.lstrip("-").isdigit() else value
    store.last_job.update(state.last_job)
    store.jobs.update({k: dict(v) for k, v in state.jobs.items()})
    store.queues.update({k: list(v) for k, v in state.queues.items()})
    store.rq_queues.update(state.rq_queues)
    store.run_history.update({k: list(v) for k, v in state.history.items()})
    store.wrong_type.update(state.wrong)
    store.paused_since.update({k: int(v) for k, v in state.paused.items()})


def fake_state(store: FakeStore, now: float) -> State:
    """What the fake's dicts hold, as a State."""
    return State(
        members=dict(store.zset), index=dict(store.index),
        last={k: unresolve(str(v), now) for k, v in store.last_enqueued.items()},
        last_job=dict(store.last_job),
        jobs={k: {f: str(v) for f, v in fields.items()} for k, fields in store.jobs.items()},
        queues={k: list(v) for k, v in store.queues.items() if v},
        rq_queues=frozenset(store.rq_queues),
        history={k: list(v) for k, v in store.run_history.items() if v},
        wrong=dict(store.wrong_type),
        paused={k: str(v) for k, v in store.paused_since.items()},
    )


def register(cls: type, runner: Any, fake: bool) -> type:
    """One test method per case on ``cls``, each ``runner(self, case)``."""
    for case in CASES:
        if fake and not case.fake:
            continue

        async def test(self: Any, case: Case = case) -> None:
            await runner(self, case)

        test.__name__ = f"test_{case.name}"
        setattr(cls, test.__name__, test)
    return cls
