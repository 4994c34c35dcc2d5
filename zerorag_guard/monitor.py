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
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Callable, Optional

from . import health, hooks
from .alerts import AlertLog, Listener
from .cleanup import STRATEGIES, Cleaner, CleanupResult
from .config import GuardConfig
from .episodes import Episodes
from .events import SEVERITY_FOR_LEVEL, Alert, Level, Sample
from .group import GroupReader, PressureGauge
from .limits import EffectiveLimit, effective_limit
from .operations import OperationLog
from .probes import MB, MemoryProbe
from .scheduling import CleanupScheduler
from .thresholds import ThresholdKeeper, Thresholds, steady_memory
from .trend import TrendWatch

logger = logging.getLogger("zerorag_guard")
#: How often the sampler re-reads the effective limit (a container can be resized live).
LIMIT_REFRESH_SECONDS = 30.0
#: ``auto`` thresholds: the steady memory is the 10th percentile of this many seconds of samples,
#: looked at this often.
STEADY_WINDOW_SECONDS = 60.0
STEADY_EVERY_SECONDS = 5.0


class MemoryMonitor:
    """Watches this process's memory. Every source of the outside world is injectable.

    ``probe`` reads RSS (a :class:`MemoryProbe`, e.g. with an injected ``rss_reader``),
    ``limit_reader`` returns the :class:`EffectiveLimit`, ``clock`` is monotonic seconds,
    ``wall`` epoch seconds for alert timestamps and ``group`` the group readings budgets' scopes
    use (:class:`~zerorag_guard.group.GroupReader`; none with an injected probe).
    """

    def __init__(
        self,
        config: Optional[GuardConfig] = None,
        *,
        probe: Optional[MemoryProbe] = None,
        limit_reader: Optional[Callable[[], EffectiveLimit]] = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        group: Optional[GroupReader] = None,
    ) -> None:
        self._initial_config = config or GuardConfig.from_env()
        self._probe = probe or MemoryProbe(use_kernel_peak=self._initial_config.use_kernel_peak)
        self._group = group or GroupReader(enabled=self._probe.source != "injected")
        self._limit_reader = limit_reader or effective_limit
        self._clock = clock
        self._wall = wall
        self._cleaner = Cleaner(self._probe.rss_bytes, clock)
        self._pressure = PressureGauge(self._group.pressure, clock)
        self._thread: Optional[threading.Thread] = None
        self._init_state(self._initial_config)
        _live_monitors.add(self)

    def _init_state(self, config: GuardConfig) -> None:
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._config = config
        self._limit: Optional[EffectiveLimit] = None
        self._limit_read_at = float("-inf")
        self._history: collections.deque[Sample] = collections.deque(maxlen=config.history_size)
        self._thresholds = ThresholdKeeper(config, self.effective_limit(), self._steady(config))
        self._steady_at = self._clock()
        self._level = Level.NORMAL
        self._alerts = AlertLog(config.alert_history_size)
        self._episodes = Episodes()
        self._trend = TrendWatch()
        self._ops = OperationLog(config.operation_history_size)
        self._peak_mb = 0.0
        # The latest reading, for callers that may use one a sample interval old (guarded
        # calls): (monotonic time, RSS bytes).
        self._latest: tuple[float, int] = (float("-inf"), 0)
        self._held = 0
        self._started_at = self._clock()
        self._last_gc = self._started_at
        self._cleanups = CleanupScheduler(
            self._cleaner, self._clock, lambda: self._config, self.alert, self._trim
        )

    # -- settings
    @property
    def config(self) -> GuardConfig:
        return self._config

    @property
    def thresholds(self) -> Thresholds:
        """The thresholds in force (see :mod:`zerorag_guard.thresholds`): the settings', derived
        for ``auto``, or widened by an active budget the user set."""
        return self._thresholds.current

    @property
    def base_thresholds(self) -> Thresholds:
        """The thresholds the settings give on this machine, no budget's widening: the ceiling
        of a budget given no limit."""
        return self._thresholds.base

    def allow(self, ceiling: int) -> int:
        """A budget the user set allows memory up to ``ceiling`` bytes: while it is active the
        levels follow it (see :mod:`zerorag_guard.thresholds`). Returns the token for
        :meth:`disallow`."""
        return self._thresholds.allow(ceiling)

    def disallow(self, token: int) -> None:
        self._thresholds.disallow(token)

    @property
    def probe(self) -> MemoryProbe:
        return self._probe

    @property
    def group(self) -> GroupReader:
        """The readings of this process's groups (cgroup, process tree, host), for scopes."""
        return self._group

    @property
    def cleaner(self) -> Cleaner:
        return self._cleaner

    def configure(self, **changes: Any) -> GuardConfig:
        """Change settings now, without a restart; validated like the environment
        (:class:`~zerorag_guard.ConfigError` on a bad value, and nothing changes)."""
        with self._lock:
            new = self._config.replace(**changes)
            # A conflict with the machine (auto) raises here, and nothing changes.
            self._thresholds.update(new, steady=self._steady(new), strict=True)
            old, self._config = self._config, new
            if new.history_size != old.history_size:
                self._history = collections.deque(self._history, maxlen=new.history_size)
            if new.alert_history_size != old.alert_history_size:
                self._alerts.resize(new.alert_history_size)
            if new.operation_history_size != old.operation_history_size:
                self._ops.resize(new.operation_history_size)
            retired = None
            if new.cleanup_queue_size != old.cleanup_queue_size:
                retired = self._cleanups.resize_queue(new.cleanup_queue_size)
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
        entry, release = self._thresholds.marks
        level = current = self._level
        while level < Level.CRITICAL and rss >= entry[level]:
            level = Level(level + 1)
        while level > Level.NORMAL and rss < release[level - 1]:
            level = Level(level - 1)
        pressed = self._pressure.pressed(self._config.pressure_percent)
        if pressed and level < Level.HIGH:
            level = Level.HIGH  # the kernel is reclaiming hard: act before any limit is hit
        if level != current:
            self._change_level(level, rss, pressed)
        if self._config.predict_seconds > 0:
            self._predict(rss, level)
        if self._episodes:
            self._end_episodes(rss, level)
        sample = Sample(self._clock(), rss / MB, level)
        self._latest = (sample.time, rss)
        self._history.append(sample)
        if sample.rss_mb > self._peak_mb:
            self._peak_mb = sample.rss_mb
        if level > Level.NORMAL:
            self._cleanups.for_level(level)
        return sample

    def recent_rss_bytes(self) -> int:
        """RSS in bytes from the sampler's latest reading while it is fresh (at most two sample
        intervals old), else a fresh reading. Guarded calls use it: a ``pread`` of ``/proc`` is
        a system call, and on this kind of VM each one also slows the user code that follows
        it (page-table switches), which measured as 1.5% of a 0.6 ms batch."""
        at, rss = self._latest
        if self._clock() - at <= 2 * self._config.sample_interval:
            return rss
        return self._probe.rss_bytes()

    def rss_mb(self) -> float:
        """A fresh RSS reading in MB, without touching level or history."""
        return self._probe.rss_bytes() / MB

    @property
    def level(self) -> Level:
        return self._level

    @property
    def under_pressure(self) -> bool:
        """Whether the latest PSI reading was at or above ``pressure_percent`` (see
        :class:`~zerorag_guard.group.PressureGauge`); batches hold back while it is."""
        return self._pressure.pressed(self._config.pressure_percent)

    @property
    def history(self) -> list[Sample]:
        return list(self._history)

    @property
    def alerts(self) -> list[Alert]:
        return self._alerts.items()

    def effective_limit(self, refresh: bool = False) -> EffectiveLimit:
        """The binding memory limit (host, cgroup or rlimit), re-read every 30 s at most."""
        now = self._clock()
        if refresh or self._limit is None or now - self._limit_read_at > LIMIT_REFRESH_SECONDS:
            self._limit = self._limit_reader()
            self._limit_read_at = now
        return self._limit

    # -- levels and alerts
    def _change_level(self, level: Level, rss: int, pressed: bool = False) -> None:
        with self._lock:
            old = self._level
            if level == old:
                return
            self._level = level
        if level > old and pressed and rss < self._thresholds.marks[0][Level.HIGH - 1]:
            self.alert(
                SEVERITY_FOR_LEVEL[level],
                "pressure",
                f"memory pressure: PSI some avg10 {self._pressure.value:.1f}% (ZERORAG_GUARD_"
                f"PRESSURE_PERCENT {self._config.pressure_percent:g}%); memory at "
                f"{rss / MB:.1f} MB entered {level.name}",
                rss_mb=rss / MB,
                level=level,
                pressure_percent=self._pressure.value,
            )
        elif level > old:
            threshold = self._thresholds.current.entries()[level - 1] / MB
            self.alert(
                SEVERITY_FOR_LEVEL[level],
                "memory",
                f"memory at {rss / MB:.1f} MB entered {level.name} (threshold {threshold:.0f} MB)",
                rss_mb=rss / MB,
                level=level,
            )
        # A fall is announced when the episode it ends is over (see zerorag_guard.episodes).

    def _predict(self, rss: int, level: Level) -> None:
        """Predictive cleanup (see :mod:`zerorag_guard.trend`): a climb that reaches the main or
        critical threshold within ``predict_seconds`` raises a ``trend`` alert (its level is
        the one predicted) and runs that level's cleanup now, within the cool-downs."""
        trend = self._trend
        trend.note(self._clock(), rss)
        if trend.rate() is None:
            return
        marks = self._thresholds.marks[0]
        seen = trend.predict(rss, marks, level, self._config.predict_seconds)
        if seen is None:
            return
        name = "critical" if seen.level == Level.CRITICAL else "main"
        self.alert(
            SEVERITY_FOR_LEVEL[seen.level],
            "trend",
            f"memory rising {seen.rate / MB:,.1f} MB/s: at {rss / MB:.1f} MB it reaches the "
            f"{name} threshold {marks[seen.level - 1] / MB:.0f} MB in {seen.seconds:.1f} s",
            rss_mb=rss / MB,
            level=seen.level,
            rate_mb_per_s=round(seen.rate / MB, 1),
            seconds_left=round(seen.seconds, 1),
        )
        self._cleanups.for_level(seen.level)

    def _end_episodes(self, rss: int, level: Level) -> None:
        """Mark the level episodes memory has fallen below; close those over, with one
        ``recovered`` alert for the highest of them."""
        now = self._clock()
        self._episodes.note(rss / MB, level, now, self._wall())
        over = self._episodes.due(now, self._config.alert_repeat_seconds)
        if not over:
            return
        top = max(over, key=lambda e: e.level)
        self.alert(
            "info",
            "recovered",
            f"memory at {rss / MB:.1f} MB, back to {level.name}: {top.summary()}",
            rss_mb=rss / MB,
            level=level,
            recovered_from=top.level.name,
            episode_seconds=round((top.left or now) - top.started, 1),
            peak_mb=round(top.peak_mb, 1),
            repeats=top.repeats,
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
        """Record an alert, log it on the ``zerorag_guard`` logger and tell every listener; or,
        when the same kind, level and subject was raised within ``alert_repeat_seconds``, count
        it on that open episode instead (see :mod:`zerorag_guard.episodes`). Returns the alert
        either way."""
        self._alerts.check_severity(severity)
        item = Alert(
            self._wall(),
            severity,
            kind,
            message,
            self.rss_mb() if rss_mb is None else rss_mb,
            self._level if level is None else level,
            data,
        )
        if kind == "recovered" or self._episodes.admit(
            item, self._clock(), self._config.alert_repeat_seconds
        ):
            self._alerts.emit(item)
        return item

    def add_listener(self, callback: Listener) -> Listener:
        """Call ``callback(alert)`` on every alert; returns it, so it can serve as a decorator."""
        return self._alerts.add_listener(callback)

    def remove_listener(self, callback: Listener) -> None:
        self._alerts.remove_listener(callback)

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
            self._cleanups.queue_standard()
            return None
        return self._cleanups.run(strategy)

    def cleanup_due(self, strategy: str) -> bool:
        """Whether ``strategy`` is past its cool-down and, for the routine ones (light and
        standard), within the GC time budget."""
        return self._cleanups.due(strategy)

    def wait_for_cleanups(self, timeout: Optional[float] = None) -> None:
        """Wait until the queued (standard) cleanups have run."""
        self._cleanups.worker.join(timeout)

    def _trim(self, strategy: str) -> int:
        """Drop old history after a cleanup; returns the number of entries dropped."""
        with self._lock:
            before = len(self._history)
            if strategy == "aggressive":
                keep = max(10, self._config.history_size // 10)
                self._history = collections.deque(
                    list(self._history)[-keep:], maxlen=self._config.history_size
                )
            elif len(self._history) == self._history.maxlen:
                # Drop the oldest quarter of a full history.
                for _ in range(len(self._history) // 4):
                    self._history.popleft()
            dropped = before - len(self._history)
        if strategy == "aggressive":
            return dropped + self._alerts.trim(keep=10) + self._ops.clear_times()
        return dropped + self._alerts.trim(older_than=self._wall() - 3600.0)

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
        hooks.run_start_hooks(self)
        return self

    def stop(self) -> None:
        """Stop the sampler and the cleanup worker; safe to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._thread = None
        self._cleanups.worker.stop()
        hooks.run_stop_hooks(self)

    def _loop(self) -> None:
        while not self._stop.wait(self._config.sample_interval):
            if not self._held:
                self.tick()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the sampler (no samples, no automatic cleanups) inside the block. The leak
        profiler uses it, so the monitor's own history filling up is not taken for a leak."""
        with self._lock:
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1

    def tick(self) -> None:
        """One round of the sampler: a sample, the periodic GC, the limit refresh. Never raises:
        the sampler must outlive any fault in a listener, a cache clearer or a cleanup."""
        try:
            sample = self.sample()
            self._probe.note(int(sample.rss_mb * MB))
            now = self._clock()
            if now - self._last_gc >= self._config.gc_interval_seconds:
                self._last_gc = now
                self._cleanups.run("light")
            limit = self.effective_limit()
            if now - self._steady_at >= STEADY_EVERY_SECONDS:
                self._steady_at = now
                self._follow_the_machine(limit)
        except Exception:
            logger.exception("monitor tick failed; sampling goes on")

    def _steady(self, config: GuardConfig) -> int:
        """The steady memory ``auto`` thresholds derive from: the 10th percentile of the last
        minute of samples, or a reading now before there are any; 0 (nothing read, no history
        scanned) for thresholds set as numbers."""
        if not config.auto_thresholds:
            return 0
        since = self._clock() - STEADY_WINDOW_SECONDS
        recent = [s.rss_mb * MB for s in self._history if s.time >= since]
        return steady_memory(recent) if recent else self._probe.rss_bytes()

    def _follow_the_machine(self, limit: EffectiveLimit) -> None:
        """Derive the thresholds again when the limit changed or, for ``auto``, the steady
        memory moved."""
        steady = self._steady(self._config)
        if not self._thresholds.moved(limit, steady):
            return
        self._thresholds.update(limit=limit, steady=steady)
        if self._config.auto_thresholds:
            t = self._thresholds.base
            logger.info(
                "auto thresholds derived again: %.0f / %.0f MB (%s; %s)",
                t.main / MB,
                t.critical / MB,
                t.why["main"],
                t.why["critical"],
            )

    # -- lifecycle
    def reset(self) -> None:
        """Back to a fresh monitor with the settings it was built with (for tests)."""
        was_running = self.running
        self.stop()
        self._init_state(self._initial_config)
        if was_running:
            self.start()

    def _after_fork(self) -> None:
        was_running = self._thread is not None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None
        self._cleanups.after_fork()
        self._alerts.after_fork()
        self._episodes.after_fork()
        self._ops.after_fork()
        self._started_at = self._clock()
        if was_running:
            self.start()


_live_monitors: weakref.WeakSet[MemoryMonitor] = weakref.WeakSet()
_global: Optional[MemoryMonitor] = None
_global_lock = threading.Lock()


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


def process_monitor() -> Optional[MemoryMonitor]:
    """The process-wide monitor if it has been created, without creating it."""
    return _global


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
