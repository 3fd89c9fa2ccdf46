"""Values and converters the ``btu`` parser needs before any command is chosen.

They live here, not beside their commands, because building the parser must
not import the commands' modules: those load redis-py, PyMySQL, croniter or
Twisted, and a ``btu ping`` would pay for all of them.
"""

from __future__ import annotations

import argparse
from datetime import datetime

__all__ = ["MAX_RUNS", "PING_METHOD", "parse_after", "run_count"]

#: Upper bound for ``next-runs -n``: a preview, not a calendar export.
MAX_RUNS = 1000

#: BTU's whitelisted "are you there" method (``btu/btu_api/endpoints.py``); answers "pong".
PING_METHOD = "btu.btu_api.endpoints.test_ping"


def parse_after(text: str) -> datetime:
    """argparse type for ``--after``: an ISO 8601 time (naive ones are read in ``--tz``)."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2025-03-30T01:30 or 2025-03-30T01:30:00+01:00)"
        ) from None


def run_count(text: str) -> int:
    """argparse type for ``next-runs -n``: a whole number from 1 to :data:`MAX_RUNS`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_RUNS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_RUNS}, got {value}")
    return value
