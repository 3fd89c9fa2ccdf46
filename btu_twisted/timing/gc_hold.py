"""Cyclic garbage collection held off while a burst is built or claimed."""

from __future__ import annotations

import gc

# Cyclic garbage collection is held off while a burst is built or claimed (by
# any site's timer: the collector is the process's); it runs again when the
# last hold ends.  Objects are still freed as their last reference goes.
_gc_holds = 0
_gc_was_enabled = False


def gc_pause() -> None:
    global _gc_holds, _gc_was_enabled
    if _gc_holds == 0:
        _gc_was_enabled = gc.isenabled()
        gc.disable()
    _gc_holds += 1


def gc_resume() -> None:
    global _gc_holds
    _gc_holds -= 1
    if _gc_holds == 0 and _gc_was_enabled:
        gc.enable()
