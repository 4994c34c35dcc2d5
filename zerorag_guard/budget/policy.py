"""What a budget does at its ceiling: the ``on_exceed`` policy, between batches and on entry.

Under the ceiling, the cleanup the budget's level calls for runs between batches (within the
monitor's cool-downs). Over it, ``raise`` raises :class:`~zerorag_guard.MemoryBudgetExceeded` at
once; ``warn`` says it once and goes on; ``cleanup`` escalates cleanup (standard, then
aggressive) and raises only when memory is still over, or when even batches of
``min_batch_size`` peak over the ceiling twice in a row after an aggressive cleanup (the budget
cannot be kept: the error says what the smallest batch needs). A part of
:class:`~zerorag_guard.budget.budget.MemoryBudget` (its base class), kept apart from the ceiling
and the entering and leaving; the attributes it reads are the budget's, declared here for the
type checker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

from ..errors import MemoryBudgetExceeded
from ..events import CLEANUP_FOR_LEVEL, Level
from ..memory.probes import MB
from ..monitor.cleanup import CleanupResult
from ..monitor.monitor import MemoryMonitor
from .settings import Settings

logger = logging.getLogger("zerorag_guard")


class Policy:
    """The budget's checks against its ceiling, its cleanups, and how it says it was exceeded."""

    _settings: Settings
    processed: int
    exceeded: int
    cleanups: list[CleanupResult]
    _warned: bool
    _smallest_over: int

    if TYPE_CHECKING:  # the budget's own, used here

        @property
        def name(self) -> Optional[str]: ...

        @property
        def monitor(self) -> MemoryMonitor: ...

        def limit_bytes(self) -> int: ...

        def level(self, rss: int, limit: Optional[int] = None) -> Level: ...

        def _note_peak(self, rss: int) -> None: ...

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
