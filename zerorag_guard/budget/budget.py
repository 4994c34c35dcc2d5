"""``memory_budget``: a guard that keeps a block of work under a memory ceiling.

One :class:`MemoryBudget` serves as ``with`` block, ``async with`` block and decorator. Its
:meth:`~MemoryBudget.chunks` splits an iterable into batches sized from the measured memory cost
per item (see :mod:`zerorag_guard.budget.sizing`), runs the cleanup that memory calls for between
batches, and applies the ``on_exceed`` policy when the ceiling is reached. Budgets nest: the
innermost active budget of the current thread or task (a ``ContextVar``) sees the limits of those
around it, so the tightest one governs. Each use gets fresh state: entering a budget that is
already active (another thread, a recursive call) works on a copy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextvars import ContextVar, Token
from typing import Any, Callable, Optional, TypeVar, Union

from ..events import Level
from ..memory.limits import EFFECTIVE_LIMIT_SHARE
from ..memory.probes import MB
from ..monitor.cleanup import CleanupResult
from ..monitor.monitor import MemoryMonitor
from ..monitor.process import get_monitor
from . import chunking
from .checkpoint import Checkpoint, LoopCheckpoint
from .policy import Policy
from .settings import Settings, count, default_ceiling_bytes

logger = logging.getLogger("zerorag_guard")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
_active: ContextVar[Optional[MemoryBudget]] = ContextVar("zerorag_guard_budget", default=None)


def current_budget() -> Optional[MemoryBudget]:
    """The innermost budget active in this thread or task, if any."""
    return _active.get()


class MemoryBudget(Policy):
    """A memory ceiling for a block of work; see :func:`memory_budget` for the arguments.

    After (or during) the block: ``peak_mb`` (exact, from the kernel's high-water mark where
    available), ``group_peak_mb`` (the cgroup's, where the scope counts one), ``processed``
    (items whose batch completed: the resume cursor), ``batch_sizes``, ``cleanups`` (a
    :class:`~zerorag_guard.monitor.cleanup.CleanupResult` each) and :meth:`stats`.
    """

    def __init__(
        self,
        limit_mb: Union[float, str, None] = None,
        *,
        increase_mb: Union[float, str, None] = None,
        on_exceed: str = "cleanup",
        batch_size: Optional[int] = None,
        min_batch_size: int = 1,
        max_batch_size: Optional[int] = None,
        name: Optional[str] = None,
        monitor: Optional[MemoryMonitor] = None,
        scope: str = "auto",
        checkpoint: Union[str, os.PathLike[str], Checkpoint, None] = None,
        key: Optional[Callable[[Any], Any]] = None,
        reset_checkpoint: bool = False,
    ) -> None:
        self._settings = Settings.parse(
            limit_mb,
            increase_mb=increase_mb,
            on_exceed=on_exceed,
            batch_size=batch_size,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            name=name,
            monitor=monitor,
            scope=scope,
            checkpoint=checkpoint,
            key=key,
            reset_checkpoint=reset_checkpoint,
        )
        self._busy: Optional[threading.Lock] = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.peak_mb = 0.0
        #: The peak of the cgroup its loops counted (see
        #: :class:`~zerorag_guard.memory.cgroups.GroupPeak`), in MB, and ``group_peak_source``:
        #: ``"memory.peak"`` (exact) or ``"sampled"``.
        self.group_peak_mb: Optional[float] = None
        self.group_peak_source: Optional[str] = None
        self.processed = 0
        self.batch_sizes: list[int] = []
        self.cleanups: list[CleanupResult] = []
        self.exceeded = 0
        self._entry_rss: Optional[int] = None
        self._parent: Optional[MemoryBudget] = None
        self._token: Optional[Token[Optional[MemoryBudget]]] = None
        self._ended = False
        self._allowance: Optional[int] = None  # see MemoryMonitor.allow
        self._window: Any = None
        self._started = 0.0
        self._seconds = 0.0
        self._warned = False
        #: Batches of ``min_batch_size`` in a row whose peak was over the ceiling.
        self._smallest_over = 0
        #: Items a previous run completed (see ``checkpoint=``), skipped by this one.
        self.skipped = 0
        self._checkpoint: Optional[Checkpoint] = None

    def _fresh(self) -> MemoryBudget:
        """A new budget with the same (already validated) settings: cheap, for every call."""
        twin = MemoryBudget.__new__(MemoryBudget)
        twin._settings = self._settings
        twin._busy = None
        twin._reset()
        return twin

    # -- settings and limits ----------------------------------------------------------------------
    @property
    def name(self) -> Optional[str]:
        return self._settings.name

    @property
    def on_exceed(self) -> str:
        return self._settings.on_exceed

    @property
    def monitor(self) -> MemoryMonitor:
        return self._settings.monitor or get_monitor()

    @property
    def _limits_memory(self) -> bool:
        """Whether this budget has a ceiling of its own (else it only inherits one)."""
        return self._settings.limit_mb is not None or self._settings.increase_mb is not None

    def limit_bytes(self) -> int:
        """The ceiling now: the given limit (default: the main threshold), never above 90% of the
        effective limit, lowered by ``increase_mb`` over memory at entry and by enclosing budgets.
        Read at every check, so ``configure()`` at run time moves a default ceiling."""
        s = self._settings
        monitor = self.monitor
        limit: float = default_ceiling_bytes(monitor)
        if s.limit_mb is not None:
            limit = min(s.limit_mb * MB, EFFECTIVE_LIMIT_SHARE * monitor.effective_limit().bytes)
        if s.increase_mb is not None and self._entry_rss is not None:
            limit = min(limit, self._entry_rss + s.increase_mb * MB)
        parent = self._live_parent()
        if parent is not None:
            limit = min(limit, parent.limit_bytes())
        return int(limit)

    def _live_parent(self) -> Optional[MemoryBudget]:
        """The nearest enclosing budget still active: one left before this one (out of the
        order they were entered in, as generators and manual ``__exit__`` can) is skipped."""
        parent = self._parent
        while parent is not None and parent._ended:
            parent = parent._parent
        return parent

    @property
    def limit_mb(self) -> float:
        return self.limit_bytes() / MB

    def level(self, rss: int, limit: Optional[int] = None) -> Level:
        """The level of ``rss`` against this budget: the monitor's ratios applied to the ceiling
        (critical = the ceiling), or the monitor's own level if that is higher."""
        limit = self.limit_bytes() if limit is None else limit
        monitor = self.monitor
        base = monitor.base_thresholds
        main = limit * base.main / base.critical
        if rss >= limit:
            own = Level.CRITICAL
        elif rss >= main:
            own = Level.HIGH
        elif rss >= main * monitor.config.preventive_ratio:
            own = Level.PREVENTIVE
        else:
            own = Level.NORMAL
        return max(own, self.monitor.level)

    # -- entering and leaving ---------------------------------------------------------------------
    def _enter(self, exact_peak: bool) -> None:
        monitor = self.monitor
        rss = monitor.probe.rss_bytes()
        self._entry_rss = rss
        self._parent = _active.get()
        # Only a budget with a ceiling of its own can tighten the ones nested in it: skip the
        # ContextVar for the others, which keeps a plain guarded call cheap.
        if exact_peak or self._limits_memory:
            self._token = _active.set(self)
        limit = None
        if self._limits_memory:
            # Memory under a ceiling the user set is allowed: the monitor's levels follow it.
            limit = self.limit_bytes()
            self._allowance = monitor.allow(limit)
        # From here on a failure (a KeyboardInterrupt landing in open_window's /proc reads
        # included) must reset the ContextVar, or a stale budget stays active.
        try:
            self._window = monitor.probe.open_window() if exact_peak else None
            self._started = time.perf_counter()
            self._note_peak(rss)
            self._check(rss, can_shrink=False, routine=False, limit=limit)
        except BaseException:
            self._exit(error=True)
            raise

    def _loop_checkpoint(self) -> Optional[LoopCheckpoint]:
        """The checkpoint of the next loop over :meth:`chunks`, where there is one."""
        s = self._settings
        if s.checkpoint is None:
            return None
        if self._checkpoint is None:
            self._checkpoint = (
                s.checkpoint
                if isinstance(s.checkpoint, Checkpoint)
                else Checkpoint(s.checkpoint, s.key, s.reset_checkpoint)
            )
        return self._checkpoint.start_loop()

    def _exit(self, error: bool = False) -> None:
        if self._checkpoint is not None:
            # A block of its own that ended well completes the job; a store's write does not.
            own = not isinstance(self._settings.checkpoint, Checkpoint)
            self._checkpoint.close(complete=own and not error)
            self._checkpoint = None
        try:
            if self._window is not None:
                self._note_peak(self._window.close())
                self._window = None
            else:
                self._note_peak(self.monitor.probe.rss_bytes())
        finally:
            # Even if an interrupt lands in the reading above, the budget must stop being active.
            if self._allowance is not None:
                self.monitor.disallow(self._allowance)
                self._allowance = None
            self._ended = True
            if self._token is not None and _active.get() is self:
                try:
                    _active.reset(self._token)
                except ValueError:  # left in another context (a generator resumed elsewhere)
                    _active.set(self._parent)
                restored = _active.get()
                if restored is not None and restored._ended:  # it was left first: skip it
                    _active.set(restored._live_parent())
            # Else a budget entered inside this one is still active: it skips this one when it
            # is left, and so does every check of its ceiling meanwhile.
            self._token = None
            self._seconds = time.perf_counter() - self._started

    def _claim(self) -> MemoryBudget:
        # Fresh state per use: the first user gets this object, concurrent ones a copy.
        if self._busy is None:
            self._busy = threading.Lock()
        if self._busy.acquire(blocking=False):
            self._reset()
            return self
        return self._fresh()._claim()

    def _release(self) -> None:
        if self._busy is not None and self._busy.locked():
            self._busy.release()

    def __enter__(self) -> MemoryBudget:
        budget = self._claim()
        try:
            budget._enter(exact_peak=True)
        except BaseException:
            budget._release()
            raise
        return budget

    def __exit__(self, *exc: Any) -> None:
        # ``with b as x`` may have handed out a copy: leave the innermost active budget.
        budget = _active.get()
        target = budget if budget is not None and budget._settings is self._settings else self
        target._exit(error=exc[0] is not None if exc else False)
        target._release()

    async def __aenter__(self) -> MemoryBudget:
        return self.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.__exit__(*exc)

    # -- peaks ------------------------------------------------------------------------------------
    def _note_peak(self, rss: int) -> None:
        mb = rss / MB
        if mb > self.peak_mb:
            self.peak_mb = mb

    def _note_group_peak(self, peak: Optional[int], source: Optional[str]) -> None:
        if peak is not None and (self.group_peak_mb is None or peak / MB > self.group_peak_mb):
            self.group_peak_mb, self.group_peak_source = peak / MB, source

    # -- adaptive chunks --------------------------------------------------------------------------
    def chunks(
        self,
        iterable: Iterable[T],
        batch_size: Optional[int] = None,
        *,
        first_batch_size: Optional[int] = None,
    ) -> Iterator[list[T]]:
        """Split ``iterable`` into lists whose size adapts to measured memory.

        Every item is handed out exactly once, in order. A batch counts as processed when the
        loop asks for the next one, so after an exception ``processed`` is the resume cursor.
        ``batch_size`` overrides the budget's target size for this loop. ``first_batch_size``
        replaces slow start's first batch (``min_batch_size``) when the caller knows what a
        batch of these items costs: a guarded store starts each write at the largest batch of
        its previous one.
        """
        return chunking.chunks(
            self,
            iterable,
            count(batch_size, "batch_size"),
            count(first_batch_size, "first_batch_size"),
        )

    def achunks(
        self,
        iterable: Union[AsyncIterable[T], Iterable[T]],
        batch_size: Optional[int] = None,
        *,
        first_batch_size: Optional[int] = None,
    ) -> AsyncIterator[list[T]]:
        """:meth:`chunks` for ``async for``, over an async or a plain iterable."""
        return chunking.achunks(
            self,
            iterable,
            count(batch_size, "batch_size"),
            count(first_batch_size, "first_batch_size"),
        )

    def stats(self) -> dict[str, Any]:
        """What the budget saw: limit, peak, items, batches, cleanups by kind, time."""
        by_kind: dict[str, int] = {}
        for result in self.cleanups:
            by_kind[result.strategy] = by_kind.get(result.strategy, 0) + 1
        sizes = self.batch_sizes
        seconds = self._seconds or (time.perf_counter() - self._started if self._started else 0.0)
        return {
            "name": self.name,
            "limit_mb": round(self.limit_mb, 1),
            "peak_mb": round(self.peak_mb, 1),
            "processed": self.processed,
            "batches": len(sizes),
            "batch_size_min": min(sizes) if sizes else None,
            "batch_size_max": max(sizes) if sizes else None,
            "cleanups": by_kind,
            "freed_mb": round(sum(r.freed_bytes for r in self.cleanups) / MB, 1),
            "exceeded": self.exceeded,
            "on_exceed": self.on_exceed,
            "scope": self._settings.scope,
            "group_peak_mb": None if self.group_peak_mb is None else round(self.group_peak_mb, 1),
            "group_peak_source": self.group_peak_source,
            "seconds": round(seconds, 3),
            "skipped": self.skipped,
        }
