"""Predictive cleanup: the recent climb of RSS, and when it reaches a threshold.

The rate is the median of the last :data:`WINDOW` differences between successive samples, per
second: a steady climb makes every difference count, while a step (a model loaded at once) is one
difference among many and leaves the median at zero, so a step that then stays flat predicts
nothing. A climb is extrapolated no further ahead than it has been seen going on: a second of
imports at start-up predicts one second, not thirty. When the rate brings memory to the main or
the critical threshold within that and the horizon (``ZERORAG_GUARD_PREDICT_SECONDS``), the
monitor raises a ``trend`` alert with the severity of the level it predicts and runs that level's
cleanup early (within the cool-downs).
"""

from __future__ import annotations

import collections
from typing import NamedTuple, Optional

from ..events import Level

#: Successive differences the rate is the median of (1 s at the default 100 ms sampling).
WINDOW = 10
#: A slower climb is noise, not a trend (bytes per second).
MIN_RATE = 1 << 20


class Prediction(NamedTuple):
    """``level`` will be reached in ``seconds`` at ``rate`` bytes per second."""

    level: Level
    seconds: float
    rate: float


class TrendWatch:
    """The samples' recent climb; :meth:`predict` says which threshold it reaches, and when."""

    def __init__(self) -> None:
        self._last: Optional[tuple[float, int]] = None
        self._rates: collections.deque[tuple[float, float]] = collections.deque(maxlen=WINDOW)
        self._since: Optional[float] = None  # when the window began of the climb going on
        self._rate: Optional[float] = None  # the window's median, as of the last note

    def note(self, time: float, rss: int) -> None:
        if self._last is not None and time > self._last[0]:
            newest = (rss - self._last[1]) / (time - self._last[0])
            self._rates.append((self._last[0], newest))
            # The median moves only when the window might be climbing: a flat process skips
            # the sort (the sampler's readings cost about 2 µs; this keeps them near that).
            if len(self._rates) < WINDOW or (newest < MIN_RATE and self._since is None):
                self._rate = None
            else:
                ordered = sorted(r for _, r in self._rates)
                self._rate = (ordered[WINDOW // 2 - 1] + ordered[WINDOW // 2]) / 2
            if self._rate is None or self._rate < MIN_RATE:
                self._since = None
            elif self._since is None:
                self._since = self._rates[0][0]
        self._last = (time, rss)

    def rate(self) -> Optional[float]:
        """Bytes per second, the median of the window while it may be climbing; None until the
        window is full, and while a flat window's newest difference is flat too."""
        return self._rate

    def predict(
        self, rss: int, marks: tuple[int, ...], level: Level, horizon: float
    ) -> Optional[Prediction]:
        """The highest of the main and critical thresholds (``marks``: preventive, main,
        critical entries) that the climb reaches within ``horizon`` seconds, if it is above
        ``level``; None when nothing is rising toward one."""
        rate = self.rate() if horizon > 0 else None
        if rate is None or rate < MIN_RATE or self._since is None or self._last is None:
            return None
        reach = min(horizon, self._last[0] - self._since)  # as far ahead as it has gone on
        for target in (Level.CRITICAL, Level.HIGH):
            if target <= level:
                return None
            seconds = (marks[target - 1] - rss) / rate
            if 0 < seconds <= reach:
                return Prediction(target, seconds, rate)
        return None

    def reset(self) -> None:
        self._last = None
        self._since = None
        self._rates.clear()
