"""Readings to levels: the level a reading puts memory at, and the alerts that tell it.

A level is entered at its threshold and left only below its release mark (the threshold x (1 -
``hysteresis_ratio``)), so a reading hovering at a threshold does not flap; PSI pressure at or
above ``pressure_percent`` lifts a lower level to HIGH (the kernel is reclaiming hard: act before
any limit is hit). Three things come of a reading:

- a rise raises a ``memory`` alert (a ``pressure`` one when pressure lifted the level);
- a climb that reaches the main or critical threshold within ``predict_seconds`` raises a
  ``trend`` alert and runs that level's cleanup early (see :mod:`zerorag_guard.monitor.trend`);
- a fall marks the episodes memory has left, and one ``recovered`` alert closes those that are
  over (see :mod:`zerorag_guard.monitor.episodes`): a fall is announced when its episode ends.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from ..config import GuardConfig
from ..events import SEVERITY_FOR_LEVEL, Level
from ..memory.group import PressureGauge
from ..memory.probes import MB
from .episodes import Episodes
from .thresholds import ThresholdKeeper
from .trend import TrendWatch

#: ``MemoryMonitor.alert``: (severity, kind, message, *, rss_mb, level, **data).
AlertFn = Callable[..., Any]


class LevelTracker:
    """The level memory is at, moved by each reading (:meth:`observe`), with its alerts."""

    def __init__(
        self,
        thresholds: ThresholdKeeper,
        pressure: PressureGauge,
        episodes: Episodes,
        alert: AlertFn,
        cleanup_for_level: Callable[[Level], Any],
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self._thresholds = thresholds
        self._pressure = pressure
        self._episodes = episodes
        self._alert = alert
        self._cleanup_for_level = cleanup_for_level
        self._clock = clock
        self._wall = wall
        self._trend = TrendWatch()
        self._lock = threading.Lock()
        self.level = Level.NORMAL

    def observe(self, rss: int, config: GuardConfig) -> Level:
        """The level of a reading of ``rss`` bytes; raises the alerts it calls for. The fast
        path (no level change, nothing climbing) is a few comparisons."""
        entry, release = self._thresholds.marks
        level = current = self.level
        while level < Level.CRITICAL and rss >= entry[level]:
            level = Level(level + 1)
        while level > Level.NORMAL and rss < release[level - 1]:
            level = Level(level - 1)
        pressed = self._pressure.pressed(config.pressure_percent)
        if pressed and level < Level.HIGH:
            level = Level.HIGH
        if level != current:
            self._change(level, rss, pressed, config)
        if config.predict_seconds > 0:
            self._predict(rss, level, config)
        if self._episodes:
            self._end_episodes(rss, level, config)
        return level

    def _change(self, level: Level, rss: int, pressed: bool, config: GuardConfig) -> None:
        with self._lock:
            old = self.level
            if level == old:
                return
            self.level = level
        if level > old and pressed and rss < self._thresholds.marks[0][Level.HIGH - 1]:
            self._alert(
                SEVERITY_FOR_LEVEL[level],
                "pressure",
                f"memory pressure: PSI some avg10 {self._pressure.value:.1f}% (ZERORAG_GUARD_"
                f"PRESSURE_PERCENT {config.pressure_percent:g}%); memory at "
                f"{rss / MB:.1f} MB entered {level.name}",
                rss_mb=rss / MB,
                level=level,
                pressure_percent=self._pressure.value,
            )
        elif level > old:
            threshold = self._thresholds.current.entries()[level - 1] / MB
            self._alert(
                SEVERITY_FOR_LEVEL[level],
                "memory",
                f"memory at {rss / MB:.1f} MB entered {level.name} (threshold {threshold:.0f} MB)",
                rss_mb=rss / MB,
                level=level,
            )

    def _predict(self, rss: int, level: Level, config: GuardConfig) -> None:
        """A climb that reaches the main or critical threshold within ``predict_seconds``: a
        ``trend`` alert (its level is the one predicted), and that level's cleanup now."""
        trend = self._trend
        trend.note(self._clock(), rss)
        if trend.rate() is None:
            return
        marks = self._thresholds.marks[0]
        seen = trend.predict(rss, marks, level, config.predict_seconds)
        if seen is None:
            return
        name = "critical" if seen.level == Level.CRITICAL else "main"
        self._alert(
            SEVERITY_FOR_LEVEL[seen.level],
            "trend",
            f"memory rising {seen.rate / MB:,.1f} MB/s: at {rss / MB:.1f} MB it reaches the "
            f"{name} threshold {marks[seen.level - 1] / MB:.0f} MB in {seen.seconds:.1f} s",
            rss_mb=rss / MB,
            level=seen.level,
            rate_mb_per_s=round(seen.rate / MB, 1),
            seconds_left=round(seen.seconds, 1),
        )
        self._cleanup_for_level(seen.level)

    def _end_episodes(self, rss: int, level: Level, config: GuardConfig) -> None:
        """Mark the level episodes memory has fallen below; close those over, with one
        ``recovered`` alert for the highest of them."""
        now = self._clock()
        self._episodes.note(rss / MB, level, now, self._wall())
        over = self._episodes.due(now, config.alert_repeat_seconds)
        if not over:
            return
        top = max(over, key=lambda e: e.level)
        self._alert(
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

    def after_fork(self) -> None:
        self._lock = threading.Lock()
