"""Cleanup strategies, light → standard → aggressive, each returning what it freed.

- light: one young-generation ``gc.collect(1)`` pass and a trim of old history;
- standard: a full ``gc.collect()`` and the registered cache clearers (the monitor queues it to
  a background worker so the sampler never blocks on it);
- aggressive: several full passes, most history dropped, every registered cache cleared,
  ``malloc_trim(0)`` where glibc has it, and ``torch.cuda.empty_cache()`` only where torch is
  already imported. ``gc.collect()`` frees Python objects, but glibc keeps freed small-object
  arenas mapped; ``malloc_trim`` returns them to the kernel (here it gave back 556 MB of a 624 MB
  fragmented heap that ``gc.collect()`` had left in RSS).

This module knows nothing of the monitor: the monitor hands it an RSS reader and a ``trim`` hook.
"""

from __future__ import annotations

import ctypes
import gc
import inspect
import logging
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

logger = logging.getLogger("zerorag_guard")

STRATEGIES = ("light", "standard", "aggressive")
Trim = Callable[[str], int]


@dataclass(frozen=True)
class CleanupResult:
    """What one cleanup did: RSS before and after, objects collected, time, caches and history."""

    strategy: str
    rss_before: int
    rss_after: int
    collected: int
    seconds: float
    caches_cleared: int = 0
    trimmed: int = 0
    malloc_trimmed: bool = False

    @property
    def freed_bytes(self) -> int:
        return max(0, self.rss_before - self.rss_after)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["freed_bytes"] = self.freed_bytes
        return out


def _load_malloc_trim() -> Optional[Callable[[int], int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The process's own symbols include libc's; find_library would run ldconfig (~10 ms).
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim  # absent on musl
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def _same(a: Any, b: Any) -> bool:
    # Identity, except for bound methods: obj.method is a new object on every access. Not ==
    # in general: two distinct empty dicts are equal but are different caches.
    return a is b or (inspect.ismethod(a) and inspect.ismethod(b) and a == b)


class Cleaner:
    """Runs the strategies; holds the registered caches and the GC time account.

    ``rss`` reads current RSS in bytes; ``clock`` is injectable so the GC budget can be tested.
    """

    def __init__(self, rss: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self._rss = rss
        self._clock = clock
        self._caches: list[Any] = []
        self._lock = threading.Lock()
        self._started = clock()
        self.gc_seconds = 0.0

    # -- registered caches
    def register_cache(self, cache: Any) -> Any:
        """Register an object with ``cache_clear()`` (``functools.lru_cache``) or ``clear()``, or a
        callable that clears a cache. Returns it, so it can be used as a decorator."""
        if not (callable(cache) or hasattr(cache, "clear")):
            raise TypeError(
                f"register_cache() takes an lru_cache, an object with clear(), or a callable; "
                f"got {type(cache).__name__}"
            )
        with self._lock:
            if not any(_same(c, cache) for c in self._caches):
                self._caches.append(cache)
        return cache

    def unregister_cache(self, cache: Any) -> None:
        with self._lock:
            self._caches = [c for c in self._caches if not _same(c, cache)]

    def clear_caches(self) -> int:
        """Clear every registered cache; one that raises is logged and skipped."""
        with self._lock:
            caches = list(self._caches)
        cleared = 0
        for cache in caches:
            try:
                if hasattr(cache, "cache_clear"):
                    cache.cache_clear()
                elif hasattr(cache, "clear") and not callable(cache):
                    cache.clear()
                elif callable(cache):
                    cache()
                else:  # pragma: no cover - rejected at registration
                    continue
                cleared += 1
            except Exception:
                logger.exception("registered cache clearer %r failed; continuing", cache)
        return cleared

    # -- GC time budget
    def gc_share(self) -> float:
        """Fraction of wall time since start spent in routine (light and standard) GC."""
        elapsed = max(self._clock() - self._started, 1e-9)
        return self.gc_seconds / elapsed

    def within_gc_budget(self, budget: float) -> bool:
        return self.gc_share() <= budget

    # -- strategies
    def run(self, strategy: str, trim: Optional[Trim] = None) -> CleanupResult:
        """Run one strategy now, in this thread."""
        if strategy not in STRATEGIES:
            raise ValueError(f"cleanup strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        before = self._rss()
        start = time.perf_counter()
        caches = trimmed = collected = 0
        trimmed_malloc = False
        if strategy == "light":
            collected = gc.collect(1)
        elif strategy == "standard":
            collected = gc.collect()
            caches = self.clear_caches()
        else:
            caches = self.clear_caches()
            # Several passes: finalizers and weakref callbacks of one pass free more in the next.
            for _ in range(3):
                n = gc.collect()
                collected += n
                if n == 0:
                    break
            if _malloc_trim is not None:
                trimmed_malloc = bool(_malloc_trim(0))
            torch = sys.modules.get("torch")
            if torch is not None:
                try:
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                except Exception:  # pragma: no cover - depends on the torch build
                    logger.debug("torch.cuda.empty_cache() failed", exc_info=True)
        if trim is not None:
            try:
                trimmed = trim(strategy)
            except Exception:
                logger.exception("history trim after %s cleanup failed; continuing", strategy)
        seconds = time.perf_counter() - start
        if strategy != "aggressive":
            self.gc_seconds += seconds
        result = CleanupResult(
            strategy, before, self._rss(), collected, seconds, caches, trimmed, trimmed_malloc
        )
        logger.debug(
            "cleanup %s: freed %.1f MB, %d objects, %.1f ms",
            strategy,
            result.freed_bytes / 2**20,
            collected,
            seconds * 1000,
        )
        return result


class CleanupWorker:
    """A daemon thread running queued cleanups; the queue is bounded so a stuck worker cannot
    pile up work: :meth:`submit` returns False when it is full."""

    def __init__(self, run: Callable[[str], Any], maxsize: int) -> None:
        self._run = run
        self._queue: queue.Queue[Optional[str]] = queue.Queue(maxsize)
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.completed = 0

    @property
    def alive(self) -> bool:
        """Whether the worker's thread is running, stopped or not: a worker asked to stop while
        inside a slow cleanup is alive until that cleanup returns."""
        return self._thread is not None and self._thread.is_alive()

    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, strategy: str) -> bool:
        with self._lock:
            if not self.alive:
                self._drop_queued()  # what a stopped worker left behind
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="zerorag-guard-cleanup", daemon=True
                )
                self._thread.start()
        try:
            self._queue.put_nowait(strategy)
        except queue.Full:
            return False
        return True

    def _loop(self) -> None:
        while not self._stopping.is_set():
            strategy = self._queue.get()
            if strategy is None or self._stopping.is_set():
                return
            try:
                self._run(strategy)
            except Exception:
                logger.exception("queued %s cleanup failed; the worker goes on", strategy)
            finally:
                self.completed += 1
                self._queue.task_done()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait until the queue is empty (for tests and orderly shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(0.005)

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the worker to end after the cleanup it is running (queued ones are dropped) and
        wait up to ``timeout`` seconds. True once its thread has ended; False while it is still
        inside a cleanup, and then :attr:`alive` stays true until that cleanup returns."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return True
        self._stopping.set()
        try:
            self._queue.put_nowait(None)  # wakes an idle worker; a busy one sees the flag
        except queue.Full:
            pass
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._drop_queued()
        return True

    def _drop_queued(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
            self._queue.task_done()

    def after_fork(self) -> None:
        # The worker thread does not exist in a forked child; start over with an empty queue.
        self._queue = queue.Queue(self._queue.maxsize)
        self._thread = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
