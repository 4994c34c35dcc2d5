"""The memory monitor: samples, levels, alerts and cleanup, with its settings changeable live.

A :class:`MemoryMonitor` samples RSS every ``sample_interval`` on its sampler thread
(:mod:`~zerorag_guard.monitor.sampler`); each sample moves the level, with hysteresis, and raises
the alerts a level calls for (:mod:`~zerorag_guard.monitor.levels`), and the level runs its
cleanup within cool-downs (:mod:`~zerorag_guard.monitor.scheduling`). What it reports (statistics,
counters, health) is in :mod:`~zerorag_guard.monitor.reports`. The process's one monitor lives
behind :func:`~zerorag_guard.get_monitor` (:mod:`~zerorag_guard.monitor.process`). After
``os.fork`` the child gets fresh locks and threads of its own.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from contextlib import AbstractContextManager
from typing import Any, Callable, Optional

from ..config import GuardConfig
from ..events import Alert, Level, Sample
from ..memory.group import GroupReader, PressureGauge
from ..memory.limits import EffectiveLimit, effective_limit
from ..memory.probes import MB, MemoryProbe
from . import hooks
from .alerts import AlertLog, Listener
from .cleanup import STRATEGIES, Cleaner, CleanupResult
from .episodes import Episodes
from .levels import LevelTracker
from .operations import OperationLog
from .reports import Reports
from .sampler import Sampler
from .scheduling import CleanupScheduler
from .thresholds import ThresholdKeeper, Thresholds, steady_memory

logger = logging.getLogger("zerorag_guard")
#: How often the sampler re-reads the effective limit (a container can be resized live).
LIMIT_REFRESH_SECONDS = 30.0
#: ``auto`` thresholds: the steady memory is the 10th percentile of this many seconds of samples,
#: looked at this often.
STEADY_WINDOW_SECONDS = 60.0
STEADY_EVERY_SECONDS = 5.0


class MemoryMonitor(Reports):
    """Watches this process's memory. Every source of the outside world is injectable.

    ``probe`` reads RSS (a :class:`MemoryProbe`, e.g. with an injected ``rss_reader``),
    ``limit_reader`` returns the :class:`EffectiveLimit`, ``clock`` is monotonic seconds,
    ``wall`` epoch seconds for alert timestamps and ``group`` the group readings budgets' scopes
    use (:class:`~zerorag_guard.memory.group.GroupReader`; none with an injected probe).
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
        self._sampler = Sampler(self.tick, lambda: self._config.sample_interval)
        self._init_state(self._initial_config)
        _live_monitors.add(self)

    def _init_state(self, config: GuardConfig) -> None:
        self._lock = threading.RLock()
        self._config = config
        self._limit: Optional[EffectiveLimit] = None
        self._limit_read_at = float("-inf")
        self._history: collections.deque[Sample] = collections.deque(maxlen=config.history_size)
        self._thresholds = ThresholdKeeper(config, self.effective_limit(), self._steady(config))
        self._steady_at = self._clock()
        self._alerts = AlertLog(config.alert_history_size)
        self._episodes = Episodes()
        self._ops = OperationLog(config.operation_history_size)
        self._peak_mb = 0.0
        # The latest reading, for callers that may use one a sample interval old (guarded
        # calls): (monotonic time, RSS bytes).
        self._latest: tuple[float, int] = (float("-inf"), 0)
        self._started_at = self._clock()
        self._last_gc = self._started_at
        self._cleanups = CleanupScheduler(
            self._cleaner, self._clock, lambda: self._config, self.alert, self._trim
        )
        self._levels = LevelTracker(
            self._thresholds,
            self._pressure,
            self._episodes,
            self.alert,
            self._cleanups.for_level,
            self._clock,
            self._wall,
        )

    # -- settings
    @property
    def config(self) -> GuardConfig:
        return self._config

    @property
    def thresholds(self) -> Thresholds:
        """The thresholds in force (see :mod:`zerorag_guard.monitor.thresholds`): the settings',
        derived for ``auto``, or widened by an active budget the user set."""
        return self._thresholds.current

    @property
    def base_thresholds(self) -> Thresholds:
        """The thresholds the settings give on this machine, no budget's widening: the ceiling
        of a budget given no limit."""
        return self._thresholds.base

    def allow(self, ceiling: int) -> int:
        """A budget the user set allows memory up to ``ceiling`` bytes: while it is active the
        levels follow it (see :mod:`zerorag_guard.monitor.thresholds`). Returns the token for
        :meth:`disallow`."""
        return self._thresholds.allow(ceiling)

    def disallow(self, token: int) -> None:
        self._thresholds.disallow(token)

    @property
    def probe(self) -> MemoryProbe:
        return self._probe

    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock this monitor runs on; budgets time their batches with it."""
        return self._clock

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
        level = self._levels.observe(rss, self._config)
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
        return self._levels.level

    @property
    def under_pressure(self) -> bool:
        """Whether the latest PSI reading was at or above ``pressure_percent`` (see
        :class:`~zerorag_guard.memory.group.PressureGauge`); batches hold back while it is."""
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

    # -- alerts
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
        it on that open episode instead (see :mod:`zerorag_guard.monitor.episodes`). Returns the
        alert either way."""
        self._alerts.check_severity(severity)
        item = Alert(
            self._wall(),
            severity,
            kind,
            message,
            self.rss_mb() if rss_mb is None else rss_mb,
            self._levels.level if level is None else level,
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

    # -- the sampler thread
    @property
    def running(self) -> bool:
        return self._sampler.running

    def start(self) -> MemoryMonitor:
        """Start the sampler thread (idempotent)."""
        self._sampler.start()
        hooks.run_start_hooks(self)
        return self

    def stop(self) -> None:
        """Stop the sampler and the cleanup worker; safe to call twice."""
        self._sampler.stop()
        self._cleanups.worker.stop()
        hooks.run_stop_hooks(self)

    def paused(self) -> AbstractContextManager[None]:
        """Hold the sampler (no samples, no automatic cleanups) inside the block. The leak
        profiler uses it, so the monitor's own history filling up is not taken for a leak."""
        return self._sampler.paused()

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
                self._thresholds.follow(limit, self._steady(self._config))
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

    # -- lifecycle
    def reset(self) -> None:
        """Back to a fresh monitor with the settings it was built with (for tests)."""
        was_running = self.running
        self.stop()
        self._init_state(self._initial_config)
        if was_running:
            self.start()

    def _after_fork(self) -> None:
        was_running = self._sampler.after_fork()
        self._lock = threading.RLock()
        self._cleanups.after_fork()
        self._alerts.after_fork()
        self._episodes.after_fork()
        self._levels.after_fork()
        self._ops.after_fork()
        self._started_at = self._clock()
        if was_running:
            self.start()


_live_monitors: weakref.WeakSet[MemoryMonitor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for monitor in list(_live_monitors):
        monitor._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
