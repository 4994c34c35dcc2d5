"""Alert episodes: one alert when a condition starts, one when it is over, and a count between.

A condition is an alert's kind, severity and level and its subject (the operation or budget it
names). Its first alert opens an episode and is raised as always. The same condition again within
``alert_repeat_seconds`` is counted on the episode (``repeats``), not raised or logged: a level
that flaps at a threshold, or a slow operation called every second, is one episode. A memory or
pressure episode is over when the level has stayed below it for that long: a ``recovered`` alert
closes it with what it was ("recovered after 3 min 10 s, peak 1,232 MB, re-entered 7 times"),
dated from the moment memory fell. Other episodes end quietly once their condition has not come
back for that long. With ``alert_repeat_seconds`` 0 every alert is raised and a fall below a
level is announced at once.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any, Optional

from ..events import Alert, Level

#: Kinds whose episode lasts while the level holds, and closes with a ``recovered`` alert.
LEVEL_KINDS = ("memory", "pressure")
#: Closed episodes the health report keeps.
RECENT = 20
Key = tuple[str, str, Level, str]


@dataclass
class Episode:
    """One condition from its first alert to its end."""

    kind: str
    level: Level
    subject: str
    severity: str
    message: str
    opened: float  # wall-clock seconds of the first alert
    started: float  # monotonic seconds of the first alert
    seen: float  # monotonic: the condition's latest alert
    peak_mb: float
    repeats: int = 0
    left: Optional[float] = None  # monotonic: when memory fell below the level (level kinds)
    left_wall: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "level": self.level.name,
            "subject": self.subject,
            "severity": self.severity,
            "message": self.message,
            "opened": self.opened,
            "repeats": self.repeats,
            "peak_mb": round(self.peak_mb, 1),
            "left": self.left_wall,
        }

    def summary(self) -> str:
        """How the episode went, for its ``recovered`` alert."""
        assert self.left is not None
        times = f"{self.repeats} time{'s' * (self.repeats != 1)}"
        again = f", re-entered {times}" if self.repeats else ""
        return (
            f"recovered from {self.level.name} after {duration(self.left - self.started)}, "
            f"peak {self.peak_mb:,.0f} MB{again}"
        )


def duration(seconds: float) -> str:
    """``3 min 10 s``, ``45 s``, ``2 h 5 min``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def key_of(alert: Alert) -> Key:
    subject = alert.data.get("operation") or alert.data.get("budget") or ""
    return alert.kind, alert.severity, alert.level, str(subject)


class Episodes:
    """The open episodes of one monitor, and the last :data:`RECENT` closed ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[Key, Episode] = {}
        self.recent: collections.deque[Episode] = collections.deque(maxlen=RECENT)
        #: Alerts counted on an open episode instead of raised, by severity.
        self.repeats: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._open)

    def admit(self, alert: Alert, now: float, window: float) -> bool:
        """Whether ``alert`` is to be raised (it opens an episode), or was counted on the open
        episode of its condition (``now`` is monotonic; ``window`` the repeat seconds)."""
        key = key_of(alert)
        with self._lock:
            episode = self._open.get(key)
            if episode is not None and window > 0 and now - self._last(episode) < window:
                episode.repeats += 1
                episode.seen, episode.left, episode.left_wall = now, None, None
                episode.peak_mb = max(episode.peak_mb, alert.rss_mb)
                self.repeats[alert.severity] = self.repeats.get(alert.severity, 0) + 1
                return False
            if episode is not None:
                self.recent.append(self._open.pop(key))
            self._open[key] = Episode(
                alert.kind,
                alert.level,
                key[3],
                alert.severity,
                alert.message,
                alert.time,
                now,
                now,
                alert.rss_mb,
            )
            return True

    @staticmethod
    def _last(episode: Episode) -> float:
        return episode.seen if episode.left is None else episode.left

    def note(self, rss_mb: float, level: Level, now: float, wall: float) -> None:
        """A sample: level episodes above ``level`` have been left (memory fell below them);
        the others' peaks take in ``rss_mb``."""
        with self._lock:
            for episode in self._open.values():
                if episode.kind not in LEVEL_KINDS:
                    continue
                if episode.level > level:
                    if episode.left is None:
                        episode.left, episode.left_wall = now, wall
                elif rss_mb > episode.peak_mb:
                    episode.peak_mb = rss_mb

    def due(self, now: float, window: float) -> list[Episode]:
        """Close the episodes that are over; returns the level episodes among them, whose
        ``recovered`` alert is due (the others end quietly)."""
        over: list[Episode] = []
        with self._lock:
            for key, episode in list(self._open.items()):
                quiet_since = episode.left if episode.kind in LEVEL_KINDS else episode.seen
                if quiet_since is None or now - quiet_since < window:
                    continue
                self.recent.append(self._open.pop(key))
                if episode.kind in LEVEL_KINDS:
                    over.append(episode)
        return over

    def status(self) -> dict[str, Any]:
        """For the health report: the open episodes, the recent closed ones, and the repeats
        counted instead of raised."""
        with self._lock:
            return {
                "open": [e.to_dict() for e in self._open.values()],
                "recent": [e.to_dict() for e in self.recent],
                "repeats": dict(self.repeats),
            }

    def after_fork(self) -> None:
        self._lock = threading.Lock()
