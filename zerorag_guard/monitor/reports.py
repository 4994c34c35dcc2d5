"""What the monitor reports: guarded calls' statistics, the exporters' counters, the health report.

A part of :class:`~zerorag_guard.monitor.monitor.MemoryMonitor` (its base class), kept apart
because it only counts and reads: the monitor's watching and acting live in ``monitor.py``. The
attributes and methods it reads are the monitor's, declared here for the type checker.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Callable

from ..config import GuardConfig
from ..events import Alert, Sample
from ..memory.group import GroupReader
from ..memory.limits import EffectiveLimit
from ..memory.probes import MB, MemoryProbe
from . import health
from .alerts import AlertLog
from .cleanup import Cleaner
from .episodes import Episodes
from .operations import OperationLog
from .scheduling import CleanupScheduler
from .thresholds import ThresholdKeeper


class Reports:
    """Statistics, counters and health: the monitor's figures, read under its lock."""

    _config: GuardConfig
    _lock: threading.RLock
    _ops: OperationLog
    _alerts: AlertLog
    _episodes: Episodes
    _cleanups: CleanupScheduler
    _cleaner: Cleaner
    _probe: MemoryProbe
    _group: GroupReader
    _thresholds: ThresholdKeeper
    _peak_mb: float
    _wall: Callable[[], float]

    if TYPE_CHECKING:  # the monitor's own, used here

        @property
        def running(self) -> bool: ...

        def sample(self) -> Sample: ...

        def effective_limit(self, refresh: bool = False) -> EffectiveLimit: ...

        alert: Callable[..., Alert]  # MemoryMonitor.alert: its signature lives there only

    @property
    def gave_back(self) -> int:
        """Cleanups so far, of any kind and from anywhere (the sampler's, a budget's, a call to
        :meth:`cleanup`), that gave back 1 MB or more: memory the allocator kept is gone, and no
        batch reuses it (a budget's loop learns its floor again after one)."""
        return self._cleanups.gave_back

    # -- operation statistics
    def record_operation(
        self, name: str, seconds: float, peak_mb: float = 0.0, error: bool = False
    ) -> None:
        """Count one guarded call; raises slow-operation and error-rate alerts."""
        cfg = self._config
        crossed = self._ops.record(name, seconds, peak_mb, error, cfg.error_rate_threshold)
        if seconds > cfg.slow_operation_seconds:
            self.alert(
                "medium",
                "slow_operation",
                f"{name} took {seconds:.1f} s (slow above {cfg.slow_operation_seconds:g} s)",
                operation=name,
                seconds=seconds,
            )
        if crossed is not None:
            rate = crossed.errors / crossed.calls
            self.alert(
                "high",
                "error_rate",
                f"{name} failed {crossed.errors} of {crossed.calls} calls ({rate:.0%})",
                operation=name,
                error_rate=rate,
            )

    def record_batch(self, size: int) -> None:
        """Count one finished batch of ``size`` items (budgets' ``chunks()`` call this)."""
        self._ops.record_batch(size)

    def operations(self) -> dict[str, dict[str, Any]]:
        return self._ops.to_dict()

    @property
    def operation_history(self) -> list[tuple[str, float]]:
        """Recent guarded calls as ``(name, seconds)``, newest last (bounded)."""
        return list(self._ops.times)

    def counters(self) -> dict[str, Any]:
        """Exact cumulative figures, for exporters (Prometheus): cleanups and bytes freed by
        strategy, alerts by severity, cleanup-queue overflows, operations (calls, errors, total
        and longest seconds, peak MB) and batches (count, items, last size, and ``buckets``:
        batches by size, keyed by the power of two at or above it)."""
        cleanups = self._cleanups
        return {
            "cleanups": dict(cleanups.counts),
            "freed_bytes": dict(cleanups.freed_bytes),
            "alerts": dict(self._alerts.counts),
            "queue_overflows": cleanups.overflows,
            "operations": self._ops.totals(),
            "batches": self._ops.batches(),
        }

    # -- health
    def get_health_status(self) -> dict[str, Any]:
        """The health report: ``health_score`` (0-100), ``memory_usage``, ``health_issues``, and
        operation statistics, alert counts, cleanups, background-service status and the group
        readings budgets share (``group``: cgroup, host, pressure, the ledgers' reservations)."""
        sample = self.sample()
        group = self._group.status()  # files and the ledgers' locks: outside the monitor's
        with self._lock:
            snapshot = health.Snapshot(
                config=self._config,
                sample=sample,
                limit=self.effective_limit(),
                peak_mb=self._peak_mb,
                lifetime_peak_mb=self._probe.lifetime_peak() / MB,
                thresholds=self._thresholds.current,
                alert_counts=dict(self._alerts.counts),
                episodes=self._episodes.status(),
                recent_alerts=[a.to_dict() for a in self._alerts.items()[-5:]],
                operations=self._ops.to_dict(),
                cleanup_counts=dict(self._cleanups.counts),
                freed_bytes=dict(self._cleanups.freed_bytes),
                after_cleanup=list(self._cleanups.after_cleanup),
                queue_overflows=self._cleanups.overflows,
                services={
                    "sampler": self.running,
                    "cleanup_worker": self._cleanups.worker.alive,
                    "cleanup_queue": self._cleanups.worker.pending(),
                    "sample_interval": self._config.sample_interval,
                    "probe": self._probe.source,
                    "kernel_peak": self._probe.kernel_peak,
                },
                gc_share=self._cleaner.gc_share(),
                wall=self._wall(),
                pid=os.getpid(),
                group=group,
            )
        return health.build(snapshot)
