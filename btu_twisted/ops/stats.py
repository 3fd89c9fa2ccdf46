"""Small summaries shared by the status request and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (no numpy on the hot path)."""
    if not values:
        return 0.0
    rank = max(0, min(len(values) - 1, round(fraction * (len(values) - 1))))
    return values[rank]


def lateness_summary(samples: Iterable[float]) -> dict[str, float | int]:
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 3),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 3),
    }
