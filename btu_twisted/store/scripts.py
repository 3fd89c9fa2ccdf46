"""The Redis Lua scripts of the package, read from ``lua/*.lua`` once at import.

The scripts live in files of their own so that they read, diff and lint as
Lua; each file's header names its KEYS, ARGV and reply.  Loaded with
importlib.resources, so an installed package (package data) works as well as
a checkout, and with no Twisted import: the synchronous ``btu`` command uses
them too.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = [
    "CANCEL", "CLAIM", "CLEAR_LAST_RUN", "CLOSE_LIVES", "FOLD_HISTORY", "FOLLOW_JOBS",
    "FORGET_LAST_RUNS", "LAST_RUN_NAMES", "LATEST_RUNS", "NAMES", "PAUSE", "PAUSED_LIST", "PLAN",
    "PRUNE_INDEX", "PRUNE_MEMBERS", "RELEASE", "RESUME", "SOONEST", "SOONEST_MANY", "TAKE",
    "TAKE_MANY", "UNPLAN_IF_OWNED", "WINDOW", "load",
]


def load(name: str) -> str:
    """The text of ``lua/<name>.lua``, exactly as Redis is sent it."""
    return files(__package__ or "btu_twisted.store").joinpath("lua", f"{name}.lua").read_text(
        encoding="utf-8")


#: Every script file's name (without ``.lua``); a test checks each ships.
NAMES = (
    "plan", "claim", "prune_index", "prune_members", "unplan_if_owned", "forget_last_runs",
    "last_run_names", "cancel", "window", "fold_history", "take", "release", "soonest",
    "latest_runs", "clear_last_run", "pause", "resume", "paused_list", "close_lives",
    "follow_jobs", "take_many", "soonest_many",
)

PLAN = load("plan")
CLAIM = load("claim")
PRUNE_INDEX = load("prune_index")
PRUNE_MEMBERS = load("prune_members")
UNPLAN_IF_OWNED = load("unplan_if_owned")
FORGET_LAST_RUNS = load("forget_last_runs")
LAST_RUN_NAMES = load("last_run_names")
CANCEL = load("cancel")
WINDOW = load("window")
FOLD_HISTORY = load("fold_history")
TAKE = load("take")
TAKE_MANY = load("take_many")
RELEASE = load("release")
SOONEST = load("soonest")
SOONEST_MANY = load("soonest_many")
LATEST_RUNS = load("latest_runs")
CLEAR_LAST_RUN = load("clear_last_run")
PAUSE = load("pause")
RESUME = load("resume")
PAUSED_LIST = load("paused_list")
CLOSE_LIVES = load("close_lives")
FOLLOW_JOBS = load("follow_jobs")
