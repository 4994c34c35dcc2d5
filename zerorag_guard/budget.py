"""``memory_budget``: a guard that keeps a block of work under a memory ceiling.

One :class:`MemoryBudget` serves as ``with`` block, ``async with`` block and decorator. Its
:meth:`~MemoryBudget.chunks` splits an iterable into batches sized from the measured memory cost
per item (see :mod:`zerorag_guard.sizing`), runs the cleanup that memory calls for between
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
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

from . import chunking
from .checkpoint import Checkpoint, LoopCheckpoint
from .cleanup import CleanupResult
from .config import parse_size_mb
from .errors import MemoryBudgetExceeded
from .events import CLEANUP_FOR_LEVEL, Level
from .limits import EFFECTIVE_LIMIT_SHARE
from .monitor import MemoryMonitor, get_monitor
from .probes import MB
from .scope import check_scope

logger = logging.getLogger("zerorag_guard")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
ON_EXCEED = ("warn", "cleanup", "raise")
_active: ContextVar[Optional[MemoryBudget]] = ContextVar("zerorag_guard_budget", default=None)


@dataclass(frozen=True)
class _Settings:
    limit_mb: Optional[float]
    increase_mb: Optional[float]
    on_exceed: str
    batch_size: Optional[int]
    min_batch_size: int
    max_batch_size: Optional[int]
    name: Optional[str]
    monitor: Optional[MemoryMonitor]
    scope: str
    #: A path (each use of the block makes its own Checkpoint) or one shared Checkpoint.
    checkpoint: Union[str, Checkpoint, None] = None
    key: Optional[Callable[[Any], Any]] = None
    reset_checkpoint: bool = False


def _count(value: Any, name: str, allow_none: bool = True) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid: expected a whole number >= 1")
    return value


_ceiling_cache: tuple[Any, Any, int] = (None, None, 0)


def default_ceiling_bytes(monitor: MemoryMonitor) -> int:
    """The ceiling of a budget given no limit: the main threshold, never above 90% of the
    effective limit. Cached on the (immutable) settings and limit objects: a guarded call
    reads it on every call."""
    global _ceiling_cache
    base, limit = monitor.base_thresholds, monitor.effective_limit()
    cached_base, cached_limit, value = _ceiling_cache
    if cached_base is not base or cached_limit is not limit:
        value = int(min(base.main, EFFECTIVE_LIMIT_SHARE * limit.bytes))
        _ceiling_cache = (base, limit, value)
    return value


def current_budget() -> Optional[MemoryBudget]:
    """The innermost budget active in this thread or task, if any."""
    return _active.get()


class MemoryBudget:
    """A memory ceiling for a block of work; see :func:`memory_budget` for the arguments.

    After (or during) the block: ``peak_mb`` (exact, from the kernel's high-water mark where
    available), ``group_peak_mb`` (the cgroup's, where the scope counts one), ``processed``
    (items whose batch completed: the resume cursor), ``batch_sizes``, ``cleanups`` (a
    :class:`~zerorag_guard.cleanup.CleanupResult` each) and :meth:`stats`.
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
        limit = (
            None
            if limit_mb is None
            else parse_size_mb(
                limit_mb, "limit_mb", "a size above 0 in MB, or a string such as '800 MB'"
            )
        )
        increase = (
            None
            if increase_mb is None
            else parse_size_mb(
                increase_mb, "increase_mb", "a size above 0 in MB, or a string such as '200 MB'"
            )
        )
        if on_exceed not in ON_EXCEED:
            raise ValueError(
                f"on_exceed={on_exceed!r} is not valid: expected one of "
                f"{', '.join(map(repr, ON_EXCEED))}"
            )
        lo = _count(min_batch_size, "min_batch_size", allow_none=False)
        hi = _count(max_batch_size, "max_batch_size")
        size = _count(batch_size, "batch_size")
        assert lo is not None
        if hi is not None and lo > hi:
            raise ValueError(f"min_batch_size={lo} is above max_batch_size={hi}")
        if size is not None and (size < lo or (hi is not None and size > hi)):
            raise ValueError(
                f"batch_size={size} is outside min_batch_size={lo} .. "
                f"max_batch_size={hi if hi is not None else 'unbounded'}"
            )
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            checkpoint = Checkpoint(checkpoint, key, reset_checkpoint).path  # checks the form
        elif checkpoint is None and (key is not None or reset_checkpoint):
            raise ValueError("key= and reset_checkpoint= need checkpoint=PATH")
        self._settings = _Settings(
            limit,
            increase,
            on_exceed,
            size,
            lo,
            hi,
            name,
            monitor,
            check_scope(scope),
            checkpoint,
            key,
            reset_checkpoint,
        )
        self._busy: Optional[threading.Lock] = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.peak_mb = 0.0
        #: The peak of the cgroup its loops counted (see :class:`~zerorag_guard.cgroups.GroupPeak`),
        #: in MB, and ``group_peak_source``: ``"memory.peak"`` (exact) or ``"sampled"``.
        self.group_peak_mb: Optional[float] = None
        self.group_peak_source: Optional[str] = None
        self.processed = 0
        self.batch_sizes: list[int] = []
        self.cleanups: list[CleanupResult] = []
        self.exceeded = 0
        self._entry_rss: Optional[int] = None
        self._parent: Optional[MemoryBudget] = None
        self._token: Optional[Token[Optional[MemoryBudget]]] = None
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
        if self._parent is not None:
            limit = min(limit, self._parent.limit_bytes())
        return int(limit)

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
            if self._token is not None:
                try:
                    _active.reset(self._token)
                except ValueError:  # left in another context (a generator resumed elsewhere)
                    _active.set(self._parent)
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

    # -- checks and cleanup -----------------------------------------------------------------------
    def _note_peak(self, rss: int) -> None:
        mb = rss / MB
        if mb > self.peak_mb:
            self.peak_mb = mb

    def _note_group_peak(self, peak: Optional[int], source: Optional[str]) -> None:
        if peak is not None and (self.group_peak_mb is None or peak / MB > self.group_peak_mb):
            self.group_peak_mb, self.group_peak_source = peak / MB, source

    def check(self) -> float:
        """Check memory now against the ceiling and apply the policy; returns RSS in MB.

        For loops that do not use :meth:`chunks`. With ``cleanup`` it escalates cleanup and
        raises :class:`~zerorag_guard.MemoryBudgetExceeded` only if memory is still over after
        an aggressive one.
        """
        rss = self.monitor.probe.rss_bytes()
        self._note_peak(rss)
        return self._check(rss, can_shrink=False) / MB

    def _check(
        self,
        rss: int,
        can_shrink: bool,
        batch_peak: int = 0,
        routine: bool = True,
        limit: Optional[int] = None,
    ) -> int:
        """Apply the policy to ``rss`` now (and the last batch's peak); returns RSS after it.

        ``routine`` also runs the cleanup the level calls for (between batches; not on entry,
        where the monitor's own sampler already does it and a guarded call must stay cheap).
        ``limit`` saves reading the ceiling again when the caller has just read it.
        """
        limit = self.limit_bytes() if limit is None else limit
        policy = self._settings.on_exceed
        if max(rss, batch_peak) <= limit:
            if not routine:
                return rss
            self._smallest_over = 0
            level = self.level(rss, limit)
            strategy = CLEANUP_FOR_LEVEL.get(level)
            if strategy is not None and policy == "cleanup" and self.monitor.cleanup_due(strategy):
                rss = self._cleanup(strategy)
            return rss
        self.exceeded += 1
        if policy == "raise":
            self._raise(max(rss, batch_peak), limit)
        smallest = batch_peak > limit and not can_shrink and routine
        if policy == "warn":
            if not self._warned:
                self._warned = True
                text = self._describe(max(rss, batch_peak), limit)
                if smallest:
                    text += f": a batch of the smallest size peaks at {batch_peak / MB:,.1f} MB"
                self.monitor.alert("high", "budget", text, budget=self.name)
            return rss
        if rss <= limit:
            if not smallest:  # only a batch's peak was over: the sizer halves the next batch
                return rss
            # Even a batch of min_batch_size peaked over the ceiling. An aggressive cleanup may
            # give the memory back (glibc's arenas); if the next smallest batch still peaks over,
            # no batch can keep the budget: say so, with what one needs, and stop.
            self._smallest_over += 1
            if self._smallest_over >= 2:
                self._raise(batch_peak, limit, smallest=True)
            return self._cleanup("aggressive")
        for strategy in ("standard", "aggressive"):
            rss = self._cleanup(strategy)
            if rss <= limit:
                return rss
        if not can_shrink:
            self._raise(rss, limit)
        return rss

    def _cleanup(self, strategy: str) -> int:
        """Run a cleanup between batches; returns RSS after it. A cleanup that fails is logged
        and the job goes on: it must never be what stops an ingestion."""
        monitor = self.monitor
        try:
            result = monitor.cleanup(strategy)
        except Exception:
            logger.exception("%s cleanup failed in %s; going on", strategy, self._describe_name())
            return monitor.probe.rss_bytes()
        assert result is not None
        self.cleanups.append(result)
        return result.rss_after

    def _describe_name(self) -> str:
        return f"budget {self.name!r}" if self.name else "memory budget"

    def _describe(self, rss: int, limit: int) -> str:
        where = self._describe_name()
        return (
            f"{where}: {rss / MB:.1f} MB over its limit {limit / MB:.1f} MB after "
            f"{self.processed} items"
        )

    def _raise(self, rss: int, limit: int, smallest: bool = False) -> None:
        raise MemoryBudgetExceeded(
            rss / MB,
            limit / MB,
            self.processed,
            self.level(rss, limit).name,
            self.name,
            smallest_batch=self._settings.min_batch_size if smallest else None,
        )

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
            _count(batch_size, "batch_size"),
            _count(first_batch_size, "first_batch_size"),
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
            _count(batch_size, "batch_size"),
            _count(first_batch_size, "first_batch_size"),
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
