"""Monitors fed with exact, scripted readings, for budget tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from zerorag_guard import GuardConfig, MemoryMonitor
from zerorag_guard.memory.limits import EffectiveLimit
from zerorag_guard.memory.probes import MB, MemoryProbe

HOST = EffectiveLimit(64 * 1024 * MB, "host", "test")


class Trace:
    """An RSS reader that plays back readings in MB, then repeats the last one."""

    def __init__(self, readings_mb: Iterable[float]) -> None:
        self.readings = [int(r * MB) for r in readings_mb] or [0]
        self.calls = 0

    def __call__(self) -> int:
        value = self.readings[min(self.calls, len(self.readings) - 1)]
        self.calls += 1
        return value

    def set(self, *readings_mb: float) -> None:
        """Play these readings next."""
        self.readings = self.readings[: self.calls] + [int(r * MB) for r in readings_mb]


class ItemCost:
    """An RSS reader for a loop where each item of a batch costs ``cost_mb`` until batch end:
    ``base_mb`` plus ``cost_mb`` for each live item, or plus ``kept`` MB when more (memory the
    allocator kept after a batch, which the next batch reuses)."""

    def __init__(self, base_mb: float, cost_mb: float) -> None:
        self.base, self.cost, self.live = base_mb, cost_mb, 0
        self.kept = 0.0

    def __call__(self) -> int:
        return int((self.base + max(self.kept, self.live * self.cost)) * MB)

    def peak(self, probe: MemoryProbe, size: int, extra_mb: float = 0.0) -> None:
        """A batch of ``size`` items at its peak (``extra_mb`` more, once), noted on ``probe``;
        its items are freed after."""
        self.live = size
        probe.note(self() + int(extra_mb * MB))
        self.live = 0


class Steady:
    """An RSS reader whose value the test sets directly."""

    def __init__(self, mb: float) -> None:
        self.mb = mb

    def __call__(self) -> int:
        return int(self.mb * MB)


def monitor_with(
    reader: object,
    limit: EffectiveLimit = HOST,
    group: object = None,
    clock: Callable[[], float] = time.monotonic,
    **config: object,
) -> MemoryMonitor:
    """A monitor (sampler not started) reading ``reader`` and configured with ``config``;
    ``group`` stands in for its group readings (a
    :class:`~zerorag_guard.memory.group.GroupReader`), ``clock`` for time (budgets time their
    batches with it)."""
    settings = {
        "threshold_mb": 1000,
        "critical_threshold_mb": 1200,
        "cleanup_cooldown_seconds": 0,
        **config,
    }
    return MemoryMonitor(
        GuardConfig(**settings),  # type: ignore[arg-type]
        probe=MemoryProbe(reader),  # type: ignore[arg-type]
        limit_reader=lambda: limit,
        group=group,  # type: ignore[arg-type]
        clock=clock,
    )
