"""Per-operation and per-batch statistics, fed by guarded calls and budgets' chunk loops.

Kept apart from the monitor so the counting (and the error-rate hysteresis: one alert per
crossing, re-armed once the rate falls back) reads and tests on its own.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class OperationStats:
    """Per-operation figures fed by guarded calls."""

    calls: int = 0
    errors: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    peak_mb: float = 0.0
    error_alerted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": self.errors / self.calls if self.calls else 0.0,
            "avg_seconds": self.total_seconds / self.calls if self.calls else 0.0,
            "max_seconds": self.max_seconds,
            "peak_mb": round(self.peak_mb, 1),
        }

    def totals(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "total_seconds": self.total_seconds,
            "max_seconds": self.max_seconds,
            "peak_mb": self.peak_mb,
        }


class OperationLog:
    """Operation statistics by name, the recent operation times, and batch-size counters."""

    def __init__(self, history_size: int) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, OperationStats] = {}
        self.times: collections.deque[tuple[str, float]] = collections.deque(maxlen=history_size)
        self._batches = {"count": 0, "items": 0, "last_size": 0}
        self._buckets: dict[int, int] = {}

    def record(
        self, name: str, seconds: float, peak_mb: float, error: bool, error_rate_threshold: float
    ) -> Optional[OperationStats]:
        """Count one call. Returns the operation's stats when its error rate has just crossed
        ``error_rate_threshold`` (after at least 10 calls), so the caller raises one alert."""
        with self._lock:
            stats = self._ops.get(name)
            if stats is None:
                stats = self._ops[name] = OperationStats()
            stats.calls += 1
            stats.errors += error
            stats.total_seconds += seconds
            if seconds > stats.max_seconds:
                stats.max_seconds = seconds
            if peak_mb > stats.peak_mb:
                stats.peak_mb = peak_mb
            self.times.append((name, seconds))
            over = stats.calls >= 10 and stats.errors / stats.calls > error_rate_threshold
            if not over:
                stats.error_alerted = False
                return None
            if stats.error_alerted:
                return None
            stats.error_alerted = True
            return stats

    def record_batch(self, size: int) -> None:
        """Count one finished batch of ``size`` items."""
        upper = 1 << max(0, size - 1).bit_length()  # the power of two at or above size
        with self._lock:
            self._batches["count"] += 1
            self._batches["items"] += size
            self._batches["last_size"] = size
            self._buckets[upper] = self._buckets.get(upper, 0) + 1

    def to_dict(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: stats.to_dict() for name, stats in self._ops.items()}

    def totals(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: stats.totals() for name, stats in self._ops.items()}

    def batches(self) -> dict[str, Any]:
        with self._lock:
            return {**self._batches, "buckets": dict(sorted(self._buckets.items()))}

    def resize(self, size: int) -> None:
        with self._lock:
            self.times = collections.deque(self.times, maxlen=size)

    def clear_times(self) -> int:
        with self._lock:
            dropped = len(self.times)
            self.times.clear()
            return dropped

    def after_fork(self) -> None:
        self._lock = threading.Lock()
