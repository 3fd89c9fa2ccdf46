"""Give the C heap's free pages back to the system after a bulk of work.

Planning 10,000 schedules, or reading them from a schedules file, leaves
freed memory in glibc's heaps (the pool threads' arenas too) that the process
keeps, so an idle daemon held 1.5-3 MiB more than it uses.  ``malloc_trim``
returns it in about 0.5 ms at that size.  Other C libraries (musl) have no
such call; then this does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_looked = False


def release_free_memory() -> bool:
    """Hand free heap pages back; False where the C library cannot."""
    global _trim, _looked
    if not _looked:
        _looked = True
        try:
            import ctypes

            _trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        except (ImportError, OSError):
            _trim = None
    if _trim is None:
        return False
    _trim(0)
    return True
