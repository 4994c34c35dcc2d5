"""The monitor's alert log: a bounded list of alerts, counts by severity, and listeners.

Every alert is logged on the ``zerorag_guard`` logger (medium as WARNING, high as ERROR,
critical as CRITICAL) and handed to each listener; a listener that raises is logged and skipped,
so no listener can stop the monitor.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Optional

from ..events import SEVERITIES, Alert

logger = logging.getLogger("zerorag_guard")
Listener = Callable[[Alert], None]
_LOG_LEVEL = {
    "info": logging.INFO,
    "medium": logging.WARNING,
    "high": logging.ERROR,
    "critical": logging.CRITICAL,
}


class AlertLog:
    """Alerts kept (newest ``size``), counted (all of them) and announced."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[Alert] = collections.deque(maxlen=size)
        self.counts = dict.fromkeys(SEVERITIES, 0)
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[Alert]:
        return list(self._items)

    def check_severity(self, severity: str) -> None:
        if severity not in self.counts:
            raise ValueError(f"alert severity {severity!r} is not one of {', '.join(self.counts)}")

    def emit(self, item: Alert) -> None:
        """Keep, count, log and announce one alert."""
        with self._lock:
            self._items.append(item)
            self.counts[item.severity] += 1
            listeners = list(self._listeners)
        logger.log(_LOG_LEVEL[item.severity], "[%s] %s", item.severity, item.message)
        for listener in listeners:
            try:
                listener(item)
            except Exception:
                logger.exception("alert listener %r failed; the monitor goes on", listener)

    def add_listener(self, callback: Listener) -> Listener:
        if not callable(callback):
            raise TypeError(f"add_listener() takes a callable, got {type(callback).__name__}")
        with self._lock:
            self._listeners.append(callback)
        return callback

    def remove_listener(self, callback: Listener) -> None:
        with self._lock:
            # ==, not is: obj.method makes a new bound-method object on every access.
            self._listeners = [c for c in self._listeners if c != callback]

    def resize(self, size: int) -> None:
        with self._lock:
            self._items = collections.deque(self._items, maxlen=size)

    def trim(self, keep: Optional[int] = None, older_than: Optional[float] = None) -> int:
        """Drop all but the newest ``keep`` alerts, or those older than ``older_than`` (epoch
        seconds); returns how many were dropped."""
        with self._lock:
            before = len(self._items)
            if keep is not None:
                for _ in range(max(0, before - keep)):
                    self._items.popleft()
            if older_than is not None:
                while self._items and self._items[0].time < older_than:
                    self._items.popleft()
            return before - len(self._items)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
