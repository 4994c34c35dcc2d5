"""When to clean up: cool-downs, the GC time budget, the background queue, and the record of
what every cleanup freed. The strategies themselves live in :mod:`zerorag_guard.monitor.cleanup`.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Optional

from ..config import GuardConfig
from ..events import CLEANUP_FOR_LEVEL, Level
from ..memory.probes import MB
from .cleanup import STRATEGIES, Cleaner, CleanupResult, CleanupWorker, Trim

AlertFn = Callable[..., Any]
#: A cleanup that freed less than this was futile: the next one of its kind waits longer...
FUTILE_BYTES = MB
#: ... its cool-down doubled for each futile one in a row, up to this many doublings.
BACKOFF_DOUBLINGS = 3


class CleanupScheduler:
    """Runs cleanups for the monitor and counts them.

    ``settings`` returns the live settings (they change at run time), ``alert`` raises a
    monitor alert, ``trim`` drops old history after a cleanup.
    """

    def __init__(
        self,
        cleaner: Cleaner,
        clock: Callable[[], float],
        settings: Callable[[], GuardConfig],
        alert: AlertFn,
        trim: Trim,
    ) -> None:
        self._cleaner = cleaner
        self._clock = clock
        self._settings = settings
        self._alert = alert
        self._trim = trim
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(STRATEGIES, 0)
        self.freed_bytes = dict.fromkeys(STRATEGIES, 0)
        #: Cleanups that gave back ``FUTILE_BYTES`` or more: see MemoryMonitor.gave_back.
        self.gave_back = 0
        self.last_result: Optional[CleanupResult] = None
        #: (time, RSS MB) right after each standard or aggressive cleanup: the leak trend's input.
        self.after_cleanup: collections.deque[tuple[float, float]] = collections.deque(maxlen=50)
        self.overflows = 0
        self._last: dict[str, float] = {}
        self._futile = dict.fromkeys(STRATEGIES, 0)  # futile cleanups in a row, by kind
        self.worker = CleanupWorker(self.run, settings().cleanup_queue_size)

    def run(self, strategy: str) -> CleanupResult:
        """Run ``strategy`` now, in this thread, and record it."""
        self._last[strategy] = self._clock()
        result = self._cleaner.run(strategy, self._trim)
        with self._lock:
            self.counts[strategy] += 1
            self.freed_bytes[strategy] += result.freed_bytes
            gave_back = result.freed_bytes >= FUTILE_BYTES
            self.gave_back += gave_back
            futile = strategy != "light" and not gave_back
            self._futile[strategy] = (
                min(self._futile[strategy] + 1, BACKOFF_DOUBLINGS) if futile else 0
            )
            self.last_result = result
            if strategy != "light":
                self.after_cleanup.append((self._clock(), result.rss_after / MB))
        return result

    def queue_standard(self) -> bool:
        """Hand a standard cleanup to the background worker; a full queue raises an alert."""
        self._last["standard"] = self._clock()
        if self.worker.submit("standard"):
            return True
        size = self._settings().cleanup_queue_size
        with self._lock:
            self.overflows += 1
        self._alert(
            "high",
            "cleanup_queue_overflow",
            f"cleanup queue full ({size} pending); standard cleanup dropped",
            queue_size=size,
        )
        return False

    def due(self, strategy: str) -> bool:
        """Whether ``strategy`` is past its cool-down (longer after futile ones) and, for the
        routine ones (light and standard), within the GC time budget."""
        cfg = self._settings()
        cooldown = (
            cfg.aggressive_cooldown_seconds
            if strategy == "aggressive"
            else cfg.cleanup_cooldown_seconds
        ) * 2 ** self._futile[strategy]
        if self._clock() - self._last.get(strategy, float("-inf")) < cooldown:
            return False
        return strategy == "aggressive" or self._cleaner.within_gc_budget(cfg.gc_time_budget)

    def for_level(self, level: Level) -> None:
        """Run the cleanup a level calls for, unless it is not due: light and aggressive at
        once, standard through the queue so the sampler never waits on a full collection."""
        strategy = CLEANUP_FOR_LEVEL[level]
        if not self.due(strategy):
            return
        if strategy == "standard":
            self.queue_standard()
        else:
            self.run(strategy)

    def resize_queue(self, size: int) -> CleanupWorker:
        """Swap in a worker with a queue of ``size``; returns the old one, to be stopped."""
        retired, self.worker = self.worker, CleanupWorker(self.run, size)
        return retired

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self.worker.after_fork()
