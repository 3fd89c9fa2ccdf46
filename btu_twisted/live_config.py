"""What a reload (SIGHUP, ``systemctl reload``) can change in a running daemon.

A running daemon holds its socket, pools, key prefix and Redis connections;
changing those safely is a restart's job.  What it can take at once is listed
in ``LIVE_KEYS``; every other key whose value changed is named in the reload's
log line as taking a restart, so an admin is never left guessing whether an
edit took effect.  The schedules (file or MariaDB) are re-read on every reload
whatever the config says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from btu_twisted.config import Config, log_level, toml_fields

if TYPE_CHECKING:
    from twisted.logger import LogLevel

__all__ = ["LIVE_KEYS", "ConfigChange", "apply_change", "config_change"]

#: Keys a reload applies to the running daemon.
LIVE_KEYS = frozenset({"tracing_level"})


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    """The config to run with after a reload, and which keys changed."""

    config: Config
    live: tuple[str, ...]
    restart: tuple[str, ...]

    def describe(self) -> str:
        """The part of the reload's log line about the config."""
        parts = [f"{key} is now {getattr(self.config, key)!r}" for key in self.live]
        if self.restart:
            parts.append("changed, taking effect at the next restart: " + ", ".join(self.restart))
        return "; ".join(parts) if parts else "config unchanged"


def config_change(old: Config, new: Config, followed: Iterable[str] = ()) -> ConfigChange:
    """``old`` with the live keys of ``new``; ``followed`` are keys the caller applies itself
    (``frappe_sites``: the sites served)."""
    skip = set(followed)
    changed = [spec.name for spec in toml_fields()
               if spec.name not in skip and getattr(old, spec.name) != getattr(new, spec.name)]
    live = tuple(key for key in changed if key in LIVE_KEYS)
    restart = tuple(key for key in changed if key not in LIVE_KEYS)
    config = dataclasses.replace(old, **{key: getattr(new, key) for key in live})
    return ConfigChange(config, live, restart)


def apply_change(old: Config, new: Config, set_level: Callable[[LogLevel], None],
                 followed: Iterable[str] = ()) -> ConfigChange:
    """:func:`config_change`, with its live keys put in force (the log level)."""
    change = config_change(old, new, followed)
    if "tracing_level" in change.live:
        set_level(log_level(change.config))
    return change
