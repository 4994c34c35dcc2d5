"""The process-wide memory monitor: samples, levels with hysteresis, alerts, cleanup, statistics.

One :class:`MemoryMonitor` per process lives behind :func:`get_monitor`; :func:`configure` changes
its settings at run time. A daemon thread samples RSS every ``sample_interval``; each sample moves
the level (a level is entered at its threshold and left only below ``threshold x (1 -
hysteresis_ratio)``, so a reading hovering at a threshold does not flap), raises alerts and runs the
cleanup the level calls for, within cool-downs. After ``os.fork`` the child gets fresh locks and
threads of its own.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import health
from .cleanup import STRATEGIES, Cleaner, CleanupResult, CleanupWorker
from .config import GuardConfig
from .events import CLEANUP_FOR_LEVEL, SEVERITY_FOR_LEVEL, Alert, Level, Sample
from .limits import EffectiveLimit, effective_limit
from .probes import MB, MemoryProbe

logger = logging.getLogger("zerorag_guard")
Listener = Callable[[Alert], None]
_LOG_LEVEL = {
    "info": logging.INFO,
    "medium": logging.WARNING,
    "high": logging.ERROR,
    "critical": logging.CRITICAL,
}
#: How often the sampler re-reads the effective limit (a container can be resized live).
LIMIT_REFRESH_SECONDS = 30.0


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


class MemoryMonitor:
    """Watches this process's memory. Every source of the outside world is injectable.

    ``probe`` reads RSS (a :class:`MemoryProbe`, e.g. with an injected ``rss_reader``),
    ``limit_reader`` returns the :class:`EffectiveLimit`, ``clock`` is monotonic seconds and
    ``wall`` epoch seconds for alert timestamps.
    """

    def __init__(
        self,
        config: Optional[GuardConfig] = None,
        *,
        probe: Optional[MemoryProbe] = None,
        limit_reader: Optional[Callable[[], EffectiveLimit]] = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._initial_config = config or GuardConfig.from_env()
        self._probe = probe or MemoryProbe(use_kernel_peak=self._initial_config.use_kernel_peak)
        self._limit_reader = limit_reader or effective_limit
        self._clock = clock
        self._wall = wall
        self._listeners: list[Listener] = []
        self._cleaner = Cleaner(self._probe.rss_bytes, clock)
        self._thread: Optional[threading.Thread] = None
        self._init_state(self._initial_config)
        _live_monitors.add(self)

    def _init_state(self, config: GuardConfig) -> None:
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._config = config
        self._marks = self._compute_marks(config)
        self._level = Level.NORMAL
        self._history: collections.deque[Sample] = collections.deque(maxlen=config.history_size)
        self._alerts: collections.deque[Alert] = collections.deque(maxlen=config.alert_history_size)
        self._alert_counts = dict.fromkeys(("info", "medium", "high", "critical"), 0)
        self._ops: dict[str, OperationStats] = {}
        self._op_times: collections.deque[tuple[str, float]] = collections.deque(
            maxlen=config.operation_history_size
        )
        self._cleanup_counts = dict.fromkeys(STRATEGIES, 0)
        self._freed_bytes = dict.fromkeys(STRATEGIES, 0)
        self._last_cleanup: dict[str, float] = {}
        self._last_result: Optional[CleanupResult] = None
        self._after_cleanup: collections.deque[tuple[float, float]] = collections.deque(maxlen=50)
        self._queue_overflows = 0
        # Budgets' batches, for exporters: count, items, last size, counts by power-of-two size.
        self._batches = {"count": 0, "items": 0, "last_size": 0}
        self._batch_buckets: dict[int, int] = {}
        self._peak_mb = 0.0
        self._started_at = self._clock()
        self._last_gc = self._started_at
        self._limit: Optional[EffectiveLimit] = None
        self._limit_read_at = float("-inf")
        self._worker = CleanupWorker(self._run_queued, config.cleanup_queue_size)

    @staticmethod
    def _compute_marks(c: GuardConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        entry = (
            int(c.preventive_threshold_mb * MB),
            int(c.threshold_mb * MB),
            int(c.critical_threshold_mb * MB),
        )
        release = tuple(int(m * (1.0 - c.hysteresis_ratio)) for m in entry)
        return entry, release

    # -- settings
    @property
    def config(self) -> GuardConfig:
        return self._config

    @property
    def probe(self) -> MemoryProbe:
        return self._probe

    @property
    def cleaner(self) -> Cleaner:
        return self._cleaner

    def configure(self, **changes: Any) -> GuardConfig:
        """Change settings now, without a restart; validated like the environment
        (:class:`~zerorag_guard.ConfigError` on a bad value, and nothing changes)."""
        with self._lock:
            new = self._config.replace(**changes)
            old, self._config = self._config, new
            self._marks = self._compute_marks(new)
            if new.history_size != old.history_size:
                self._history = collections.deque(self._history, maxlen=new.history_size)
            if new.alert_history_size != old.alert_history_size:
                self._alerts = collections.deque(self._alerts, maxlen=new.alert_history_size)
            if new.operation_history_size != old.operation_history_size:
                self._op_times = collections.deque(
                    self._op_times, maxlen=new.operation_history_size
                )
            retired = None
            if new.cleanup_queue_size != old.cleanup_queue_size:
                retired, self._worker = (
                    self._worker,
                    CleanupWorker(self._run_queued, new.cleanup_queue_size),
                )
        if retired is not None:
            retired.stop()  # outside the lock: its last cleanup may need the lock to finish
        logger.info("settings changed: %s", ", ".join(f"{k}={v!r}" for k, v in changes.items()))
        return new

    # -- readings
    def sample(self) -> Sample:
        """Take a fresh reading now, update the level, history and alerts; returns the sample.

        The fast path (no level change) is one ``pread`` of ``/proc/self/statm`` and a few
        comparisons, a few microseconds.
        """
        rss = self._probe.rss_bytes()
        entry, release = self._marks
        level = current = self._level
        while level < Level.CRITICAL and rss >= entry[level]:
            level = Level(level + 1)
        while level > Level.NORMAL and rss < release[level - 1]:
            level = Level(level - 1)
        if level != current:
            self._change_level(level, rss)
        sample = Sample(self._clock(), rss / MB, level)
        self._history.append(sample)
        if sample.rss_mb > self._peak_mb:
            self._peak_mb = sample.rss_mb
        if level > Level.NORMAL:
            self._cleanup_for(level)
        return sample

    def rss_mb(self) -> float:
        """A fresh RSS reading in MB, without touching level or history."""
        return self._probe.rss_bytes() / MB

    @property
    def level(self) -> Level:
        return self._level

    @property
    def history(self) -> list[Sample]:
        return list(self._history)

    @property
    def alerts(self) -> list[Alert]:
        return list(self._alerts)

    def effective_limit(self, refresh: bool = False) -> EffectiveLimit:
        """The binding memory limit (host, cgroup or rlimit), re-read every 30 s at most."""
        now = self._clock()
        if refresh or self._limit is None or now - self._limit_read_at > LIMIT_REFRESH_SECONDS:
            self._limit = self._limit_reader()
            self._limit_read_at = now
        return self._limit

    # -- levels and alerts
    def _change_level(self, level: Level, rss: int) -> None:
        with self._lock:
            old = self._level
            if level == old:
                return
            self._level = level
        if level > old:
            threshold = (
                self._config.preventive_threshold_mb,
                self._config.threshold_mb,
                self._config.critical_threshold_mb,
            )[level - 1]
            self.alert(
                SEVERITY_FOR_LEVEL[level],
                "memory",
                f"memory at {rss / MB:.1f} MB entered {level.name} (threshold {threshold:.0f} MB)",
                rss_mb=rss / MB,
                level=level,
            )
        else:
            self.alert(
                "info",
                "recovered",
                f"memory at {rss / MB:.1f} MB, back to {level.name}",
                rss_mb=rss / MB,
                level=level,
            )

    def alert(
        self,
        severity: str,
        kind: str,
        message: str,
        *,
        rss_mb: Optional[float] = None,
        level: Optional[Level] = None,
        **data: Any,
    ) -> Alert:
        """Record an alert, log it on the ``zerorag_guard`` logger and tell every listener."""
        if severity not in self._alert_counts:
            raise ValueError(
                f"alert severity {severity!r} is not one of {', '.join(self._alert_counts)}"
            )
        item = Alert(
            self._wall(),
            severity,
            kind,
            message,
            self.rss_mb() if rss_mb is None else rss_mb,
            self._level if level is None else level,
            data,
        )
        with self._lock:
            self._alerts.append(item)
            self._alert_counts[severity] += 1
            listeners = list(self._listeners)
        logger.log(_LOG_LEVEL[severity], "[%s] %s", severity, message)
        for listener in listeners:
            try:
                listener(item)
            except Exception:
                logger.exception("alert listener %r failed; the monitor goes on", listener)
        return item

    def add_listener(self, callback: Listener) -> Listener:
        """Call ``callback(alert)`` on every alert; returns it, so it can serve as a decorator."""
        if not callable(callback):
            raise TypeError(f"add_listener() takes a callable, got {type(callback).__name__}")
        with self._lock:
            self._listeners.append(callback)
        return callback

    def remove_listener(self, callback: Listener) -> None:
        with self._lock:
            # ==, not is: obj.method makes a new bound-method object on every access.
            self._listeners = [c for c in self._listeners if c != callback]

    # -- cleanup
    def register_cache(self, cache: Any) -> Any:
        """Have cleanups clear ``cache`` (an ``lru_cache``, an object with ``clear()``, or a
        callable). Returns it, so ``@get_monitor().register_cache`` works on a cached function."""
        return self._cleaner.register_cache(cache)

    def unregister_cache(self, cache: Any) -> None:
        self._cleaner.unregister_cache(cache)

    def cleanup(self, strategy: str = "standard", *, wait: bool = True) -> Optional[CleanupResult]:
        """Run a cleanup now and return what it freed. With ``wait=False`` a standard cleanup is
        queued to the background worker instead and ``None`` is returned."""
        if strategy not in STRATEGIES:
            raise ValueError(f"cleanup strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        if not wait and strategy == "standard":
            self._queue_standard()
            return None
        return self._run(strategy)

    def _run(self, strategy: str) -> CleanupResult:
        self._last_cleanup[strategy] = self._clock()
        result = self._cleaner.run(strategy, self._trim)
        with self._lock:
            self._cleanup_counts[strategy] += 1
            self._freed_bytes[strategy] += result.freed_bytes
            self._last_result = result
            if strategy != "light":
                self._after_cleanup.append((self._clock(), result.rss_after / MB))
        return result

    def _run_queued(self, strategy: str) -> None:
        self._run(strategy)

    def _queue_standard(self) -> bool:
        self._last_cleanup["standard"] = self._clock()
        if self._worker.submit("standard"):
            return True
        self._queue_overflows += 1
        self.alert(
            "high",
            "cleanup_queue_overflow",
            f"cleanup queue full ({self._config.cleanup_queue_size} pending); "
            "standard cleanup dropped",
            queue_size=self._config.cleanup_queue_size,
        )
        return False

    def cleanup_due(self, strategy: str) -> bool:
        """Whether ``strategy`` is past its cool-down and, for the routine ones (light and
        standard), within the GC time budget."""
        cfg = self._config
        cooldown = (
            cfg.aggressive_cooldown_seconds
            if strategy == "aggressive"
            else cfg.cleanup_cooldown_seconds
        )
        if self._clock() - self._last_cleanup.get(strategy, float("-inf")) < cooldown:
            return False
        return strategy == "aggressive" or self._cleaner.within_gc_budget(cfg.gc_time_budget)

    def _cleanup_for(self, level: Level) -> None:
        """Run the cleanup a level calls for, unless it ran within its cool-down."""
        strategy = CLEANUP_FOR_LEVEL[level]
        if not self.cleanup_due(strategy):
            return
        if strategy == "standard":
            self._queue_standard()
        else:
            self._run(strategy)

    def _trim(self, strategy: str) -> int:
        """Drop old history after a cleanup; returns the number of entries dropped."""
        with self._lock:
            before = len(self._history) + len(self._alerts) + len(self._op_times)
            if strategy == "aggressive":
                keep = max(10, self._config.history_size // 10)
                self._history = collections.deque(
                    list(self._history)[-keep:], maxlen=self._config.history_size
                )
                self._alerts = collections.deque(
                    list(self._alerts)[-10:], maxlen=self._config.alert_history_size
                )
                self._op_times.clear()
            else:
                # Drop the oldest quarter of a full history, and alerts older than an hour.
                if len(self._history) == self._history.maxlen:
                    for _ in range(len(self._history) // 4):
                        self._history.popleft()
                horizon = self._wall() - 3600.0
                while self._alerts and self._alerts[0].time < horizon:
                    self._alerts.popleft()
            return before - (len(self._history) + len(self._alerts) + len(self._op_times))

    # -- operation statistics
    def record_operation(
        self, name: str, seconds: float, peak_mb: float = 0.0, error: bool = False
    ) -> None:
        """Count one guarded call; raises slow-operation and error-rate alerts."""
        cfg = self._config
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
            self._op_times.append((name, seconds))
            rate = stats.errors / stats.calls
            error_alert = stats.calls >= 10 and rate > cfg.error_rate_threshold
            if error_alert and stats.error_alerted:
                error_alert = False
            elif not error_alert and rate <= cfg.error_rate_threshold:
                stats.error_alerted = False
            if error_alert:
                stats.error_alerted = True
        if seconds > cfg.slow_operation_seconds:
            self.alert(
                "medium",
                "slow_operation",
                f"{name} took {seconds:.1f} s (slow above {cfg.slow_operation_seconds:g} s)",
                operation=name,
                seconds=seconds,
            )
        if error_alert:
            self.alert(
                "high",
                "error_rate",
                f"{name} failed {stats.errors} of {stats.calls} calls ({rate:.0%})",
                operation=name,
                error_rate=rate,
            )

    def operations(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: stats.to_dict() for name, stats in self._ops.items()}

    def record_batch(self, size: int) -> None:
        """Count one finished batch of ``size`` items (budgets' ``chunks()`` call this)."""
        upper = 1 << max(0, size - 1).bit_length()  # the power of two at or above size
        with self._lock:
            self._batches["count"] += 1
            self._batches["items"] += size
            self._batches["last_size"] = size
            self._batch_buckets[upper] = self._batch_buckets.get(upper, 0) + 1

    def counters(self) -> dict[str, Any]:
        """Exact cumulative figures, for exporters (Prometheus): cleanups and bytes freed by
        strategy, alerts by severity, cleanup-queue overflows, operations (calls, errors, total
        and longest seconds, peak MB) and batches (count, items, last size, and ``buckets``:
        batches by size, keyed by the power of two at or above it)."""
        with self._lock:
            return {
                "cleanups": dict(self._cleanup_counts),
                "freed_bytes": dict(self._freed_bytes),
                "alerts": dict(self._alert_counts),
                "queue_overflows": self._queue_overflows,
                "operations": {
                    name: {
                        "calls": s.calls,
                        "errors": s.errors,
                        "total_seconds": s.total_seconds,
                        "max_seconds": s.max_seconds,
                        "peak_mb": s.peak_mb,
                    }
                    for name, s in self._ops.items()
                },
                "batches": {**self._batches, "buckets": dict(sorted(self._batch_buckets.items()))},
            }

    # -- health
    def get_health_status(self) -> dict[str, Any]:
        """The health report: ``health_score`` (0-100), ``memory_usage``, ``health_issues``, and
        operation statistics, alert counts, cleanups and background-service status."""
        sample = self.sample()
        with self._lock:
            snapshot = health.Snapshot(
                config=self._config,
                sample=sample,
                limit=self.effective_limit(),
                peak_mb=self._peak_mb,
                lifetime_peak_mb=self._probe.lifetime_peak() / MB,
                alert_counts=dict(self._alert_counts),
                recent_alerts=[a.to_dict() for a in list(self._alerts)[-5:]],
                operations={n: s.to_dict() for n, s in self._ops.items()},
                cleanup_counts=dict(self._cleanup_counts),
                freed_bytes=dict(self._freed_bytes),
                after_cleanup=list(self._after_cleanup),
                queue_overflows=self._queue_overflows,
                services={
                    "sampler": self.running,
                    "cleanup_worker": self._worker.alive,
                    "cleanup_queue": self._worker.pending(),
                    "sample_interval": self._config.sample_interval,
                    "probe": self._probe.source,
                    "kernel_peak": self._probe.kernel_peak,
                },
                gc_share=self._cleaner.gc_share(),
                wall=self._wall(),
                pid=os.getpid(),
            )
        return health.build(snapshot)

    # -- the sampler thread
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> MemoryMonitor:
        """Start the sampler thread (idempotent)."""
        with self._lock:
            if not self.running:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="zerorag-guard-monitor", daemon=True
                )
                self._thread.start()
        _run_hooks(_start_hooks, self)
        return self

    def stop(self) -> None:
        """Stop the sampler and the cleanup worker; safe to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._thread = None
        self._worker.stop()
        _run_hooks(_stop_hooks, self)

    def _loop(self) -> None:
        while not self._stop.wait(self._config.sample_interval):
            self.tick()

    def tick(self) -> None:
        """One round of the sampler: a sample, the periodic GC, the limit refresh. Never raises:
        the sampler must outlive any fault in a listener, a cache clearer or a cleanup."""
        try:
            sample = self.sample()
            self._probe.note(int(sample.rss_mb * MB))
            now = self._clock()
            if now - self._last_gc >= self._config.gc_interval_seconds:
                self._last_gc = now
                self._run("light")
            self.effective_limit()
        except Exception:
            logger.exception("monitor tick failed; sampling goes on")

    # -- lifecycle
    def reset(self) -> None:
        """Back to a fresh monitor with the settings it was built with (for tests)."""
        was_running = self.running
        self.stop()
        self._init_state(self._initial_config)
        with self._lock:
            self._listeners = []
        if was_running:
            self.start()

    def _after_fork(self) -> None:
        was_running = self._thread is not None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None
        self._worker.after_fork()
        self._started_at = self._clock()
        if was_running:
            self.start()


_live_monitors: weakref.WeakSet[MemoryMonitor] = weakref.WeakSet()
_global: Optional[MemoryMonitor] = None
_global_lock = threading.Lock()
#: Called with the monitor at the end of every ``start()`` / ``stop()``. Front ends that live
#: above the monitor (the control socket) register here, so nothing in the core imports them.
_start_hooks: list[Callable[[MemoryMonitor], None]] = []
_stop_hooks: list[Callable[[MemoryMonitor], None]] = []


def add_start_hook(fn: Callable[[MemoryMonitor], None]) -> None:
    """Call ``fn(monitor)`` whenever a monitor starts (also after ``os.fork`` in the child)."""
    if fn not in _start_hooks:
        _start_hooks.append(fn)


def add_stop_hook(fn: Callable[[MemoryMonitor], None]) -> None:
    """Call ``fn(monitor)`` whenever a monitor stops (``stop()``, ``reset()``)."""
    if fn not in _stop_hooks:
        _stop_hooks.append(fn)


def _run_hooks(hooks: list[Callable[[MemoryMonitor], None]], monitor: MemoryMonitor) -> None:
    for hook in list(hooks):
        try:
            hook(monitor)
        except Exception:
            logger.exception("monitor hook %r failed; the monitor goes on", hook)


def get_monitor() -> MemoryMonitor:
    """The process-wide monitor, created from the environment and started on first use."""
    global _global
    monitor = _global
    if monitor is None:
        with _global_lock:
            if _global is None:
                # Published before start() so start hooks can tell the process-wide monitor.
                _global = MemoryMonitor()
                _global.start()
            monitor = _global
    return monitor


def configure(**changes: Any) -> GuardConfig:
    """Change the process-wide monitor's settings at run time (:meth:`MemoryMonitor.configure`)."""
    return get_monitor().configure(**changes)


def _reset_global_for_tests() -> None:
    """Stop and drop the process-wide monitor; the next :func:`get_monitor` builds a fresh one."""
    global _global
    with _global_lock:
        if _global is not None:
            _global.stop()
        _global = None


def _after_fork_in_child() -> None:
    global _global_lock
    _global_lock = threading.Lock()
    for monitor in list(_live_monitors):
        monitor._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
