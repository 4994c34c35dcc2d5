"""The monitor's sampler: a daemon thread that runs one round every ``sample_interval``.

The round itself (a sample, the periodic GC, the limit refresh) is the monitor's ``tick``; this
is only the thread: started and stopped any number of times, held while a block runs (the leak
profiler holds it, so the monitor's own history filling up is not taken for a leak), and made
fresh in a forked child, where the parent's thread does not exist.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Callable, Optional


class Sampler:
    """Runs ``tick()`` every ``interval()`` seconds on a daemon thread while started."""

    def __init__(self, tick: Callable[[], None], interval: Callable[[], float]) -> None:
        self._tick = tick
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._held = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._lock:
            if not self.running:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="zerorag-guard-monitor", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for its round to end (not from the thread itself)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._interval()):
            if not self._held:
                self._tick()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No rounds inside the block."""
        with self._lock:
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1

    def after_fork(self) -> bool:
        """In a forked child: fresh lock and event, no thread. Returns whether the parent's
        was running (the caller starts it again)."""
        was_running = self._thread is not None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        return was_running
