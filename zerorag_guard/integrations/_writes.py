"""The pieces of a guarded write: parallel arguments cut in step, write statistics, resume marks.

Used by :mod:`zerorag_guard.integrations.vectorstores` and :mod:`zerorag_guard.vector_store`;
nothing here imports a store.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional

from ..budget import MemoryBudget

Split = tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]]


class WriteStats:
    """What a guarded store's writes did: calls, items, batches and their sizes, cleanups, peak.

    Shared by :class:`GuardedStore` and :class:`~zerorag_guard.vector_store.VectorStoreService`;
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


# -- splitting parallel arguments -----------------------------------------------------------------
def _sliceable(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(_sliceable(v) for v in value.values())
    return hasattr(value, "__len__") and hasattr(value, "__getitem__")


def _length(value: Any) -> int:
    if isinstance(value, Mapping):  # qdrant named vectors: {name: vectors}
        lengths = {len(v) for v in value.values()}
        return lengths.pop() if len(lengths) == 1 else -1
    return len(value)


def _slice(value: Any, start: int, stop: int) -> Any:
    if isinstance(value, Mapping):
        return {k: _slice(v, start, stop) for k, v in value.items()}
    return value[start:stop]  # a view for numpy arrays


def split_in_step(
    fields: dict[str, Any], what: str
) -> tuple[Iterable[Any], Callable[[list[Any]], dict[str, Any]], Optional[int]]:
    """Items to chunk, the function turning a chunk back into field values, and the count.

    Sized fields (lists, tuples, numpy arrays, dicts of them) are cut by index range, so a
    chunk's values are slices; when one is a plain iterable (a generator), the fields are zipped
    and streamed, and the count is unknown.
    """
    names = [k for k, v in fields.items() if v is not None]
    values = [fields[k] for k in names]
    if all(_sliceable(v) for v in values):
        lengths = {n: _length(v) for n, v in zip(names, values)}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"{what}: the arguments written together must have the same length, got "
                + ", ".join(f"{n}={k}" for n, k in lengths.items())
            )
        count = next(iter(lengths.values()), 0)

        def by_range(batch: list[int]) -> dict[str, Any]:
            start, stop = batch[0], batch[-1] + 1
            return {n: _slice(v, start, stop) for n, v in zip(names, values)}

        return range(count), by_range, count

    def by_column(batch: list[tuple[Any, ...]]) -> dict[str, Any]:
        return {n: list(column) for n, column in zip(names, zip(*batch))}

    return zip(*values, strict=True), by_column, None


def combine(results: list[Any]) -> Any:
    """List results (ids) concatenated, all-None stays None, else the last chunk's result."""
    if results and all(isinstance(r, list) for r in results):
        return list(itertools.chain.from_iterable(results))
    return results[-1] if results else None


def same(part: dict[str, Any]) -> dict[str, Any]:
    return part


def rebuild(bound: inspect.BoundArguments, part: dict[str, Any]) -> tuple[Any, Any]:
    """The call's ``(args, kwargs)`` with the chunk's values in place of the whole ones."""
    for n, v in part.items():
        bound.arguments[n] = v
    return bound.args, bound.kwargs
