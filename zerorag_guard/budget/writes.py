"""The accounting of a guarded write: its statistics and the resume mark of a failed one.

Used by :mod:`zerorag_guard.integrations.vectorstores` and :mod:`zerorag_guard.rag.vector_store`;
nothing here imports a store. How a write's arguments are cut is
:mod:`zerorag_guard.integrations._per_item`'s.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from .budget import MemoryBudget


class WriteStats:
    """What a guarded store's writes did: calls, items, batches and their sizes, cleanups, peak.

    Shared by :class:`GuardedStore` and :class:`~zerorag_guard.rag.vector_store.VectorStoreService`;
    safe to update from several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.writes = 0
        self.errors = 0
        self.items = 0
        self.batches = 0
        self.batch_size_min: Optional[int] = None
        self.batch_size_max: Optional[int] = None
        self.last_batch_sizes: list[int] = []
        self.cleanups: dict[str, int] = {}
        self.peak_mb = 0.0
        self.seconds = 0.0

    def record(self, budget: MemoryBudget, error: bool) -> None:
        """Fold in one write's budget (its batches, cleanups, peak and time)."""
        stats = budget.stats()
        sizes = list(budget.batch_sizes)
        with self._lock:
            self.writes += 1
            self.errors += int(error)
            self.items += budget.processed
            self.batches += len(sizes)
            self.last_batch_sizes = sizes
            if sizes:
                low, high = min(sizes), max(sizes)
                self.batch_size_min = (
                    low if self.batch_size_min is None else min(low, self.batch_size_min)
                )
                self.batch_size_max = (
                    high if self.batch_size_max is None else max(high, self.batch_size_max)
                )
            for kind, count in stats["cleanups"].items():
                self.cleanups[kind] = self.cleanups.get(kind, 0) + count
            self.peak_mb = max(self.peak_mb, budget.peak_mb)
            self.seconds += stats["seconds"]

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "writes": self.writes,
                "errors": self.errors,
                "items": self.items,
                "batches": self.batches,
                "batch_size_min": self.batch_size_min,
                "batch_size_max": self.batch_size_max,
                "last_batch_sizes": list(self.last_batch_sizes),
                "cleanups": dict(self.cleanups),
                "peak_mb": round(self.peak_mb, 1),
                "seconds": round(self.seconds, 3),
            }


def mark_resume(exc: BaseException, processed: int, total: Optional[int] = None) -> None:
    """Give ``exc`` the resume position ``zerorag_processed`` (and a note saying it)."""
    try:
        exc.zerorag_processed = processed  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        return
    if hasattr(exc, "add_note"):  # Python 3.11+
        of = f" of {total}" if total is not None else ""
        exc.add_note(f"zerorag_guard: {processed}{of} items were written; resume from {processed}")


class AccountedWrite:
    """One bulk write inside ``budget``: ``with`` / ``async with`` yields the active budget, and
    on the way out records it in ``stats`` and, on a failure, marks the exception with the
    resume position (the items whose batches were written)."""

    def __init__(self, budget: MemoryBudget, stats: WriteStats, total: Optional[int]) -> None:
        self._budget = budget
        self._stats = stats
        self._total = total
        self._active: Optional[MemoryBudget] = None

    def __enter__(self) -> MemoryBudget:
        try:
            self._active = self._budget.__enter__()
        except Exception as exc:
            mark_resume(exc, 0, self._total)
            raise
        return self._active

    def __exit__(self, kind: Any, exc: Optional[BaseException], tb: Any) -> None:
        active = self._active
        assert active is not None
        try:
            self._budget.__exit__(kind, exc, tb)
        finally:
            if isinstance(exc, Exception):
                mark_resume(exc, active.processed, self._total)
            self._stats.record(active, exc is not None)

    async def __aenter__(self) -> MemoryBudget:
        return self.__enter__()

    async def __aexit__(self, kind: Any, exc: Optional[BaseException], tb: Any) -> None:
        self.__exit__(kind, exc, tb)
