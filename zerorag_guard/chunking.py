"""The loops behind :meth:`MemoryBudget.chunks` and :meth:`MemoryBudget.achunks`.

Before each batch the budget's policy runs and the :class:`~zerorag_guard.sizing.BatchSizer`
picks a size for the headroom left; a kernel peak window is opened; the batch is pulled from the
iterable and handed out. When the loop asks for the next batch, the previous one counts as
processed and its exact peak teaches the sizer what an item costs.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union

from .scope import ALONE, MAX_POLLS, Scope
from .sizing import NEAR_LIMIT, SAFETY, BatchSizer

if TYPE_CHECKING:
    from .budget import MemoryBudget

T = TypeVar("T")


class _Loop:
    """One chunking loop's state: the sizer, its scope and the budget it reports to."""

    def __init__(self, budget: MemoryBudget, batch_size: Optional[int], polls: int) -> None:
        s = budget._settings
        target = batch_size or s.batch_size or budget.monitor.config.batch_size
        if s.max_batch_size is not None:
            target = min(target, s.max_batch_size)
        self.budget = budget
        self.sizer = BatchSizer(max(target, s.min_batch_size), s.min_batch_size, s.max_batch_size)
        self.scope = Scope(budget)
        self.polls = polls
        self.peak = 0
        self.limit = 0
        # A cheap batch's closing reading, which is also the next batch's starting one: each
        # /proc read is a system call, and on VMs each slows the Python code that follows it.
        self._reading: Optional[int] = None

    def plan(self) -> tuple[int, Any, int]:
        """Before a batch: apply the policy, reserve and choose the size, open the peak window."""
        budget, sizer, scope = self.budget, self.sizer, self.scope
        monitor = budget.monitor
        now, self._reading = self._reading, None
        reading = scope.read() if now is None else now
        ceiling = budget.limit_bytes()
        usage, limit, own = scope.measure(reading, ceiling)
        done = len(budget.cleanups)
        checked = budget._check(
            usage, sizer.last > sizer.min_size, self.peak if own else 0, limit=limit
        )
        if len(budget.cleanups) != done:
            reading = checked if own else scope.read()
        alone = reading + scope.headroom(ALONE, reading, ceiling)  # no other loop counted
        tight = reading > NEAR_LIMIT * alone or SAFETY * (alone - reading) < sizer.need(
            2 * sizer.min_size, reading
        )
        if (
            tight
            and sizer.cap > sizer.min_size
            and budget.on_exceed == "cleanup"
            and monitor.cleanup_due("aggressive")
        ):
            # The headroom no longer fits a real batch, though memory is under the ceiling, so
            # no policy fired. Freed memory that glibc keeps in its arenas is often the
            # difference (chroma's writes left 100+ MB there): an aggressive cleanup trims it
            # rather than letting batches collapse to min_batch_size.
            budget._cleanup("aggressive")
            reading = scope.read()
        if monitor.under_pressure:
            sizer.hold_back()  # the kernel is already reclaiming hard: before any limit is hit
        reading, self.limit = scope.reserve(sizer, reading, ceiling, self.polls)
        size = sizer.next_size(reading, self.limit)
        exact = sizer.needs_exact_peak(size, reading, self.limit)
        return size, scope.window(exact, reading), reading

    def finish(self, count: int, window: Any, start_rss: int) -> None:
        """After a batch: count it as processed and learn its cost from its peak."""
        budget = self.budget
        budget.processed += count
        budget.batch_sizes.append(count)
        budget.monitor.record_batch(count)
        if window.exact:
            self.peak = int(window.close())
        else:
            self._reading = budget.monitor.probe.rss_bytes()
            window.note(self._reading)
            self.peak = int(window.close(read=False))
        budget._note_peak(self.peak)
        self.sizer.learn(count, start_rss, self.peak, self.limit, window.exact)

    def end(self) -> None:
        """The loop is done (finished, failed or abandoned): its reservation ends, and the
        cgroup's peak over it goes to the budget."""
        self.budget._note_group_peak(*self.scope.end())


def chunks(
    budget: MemoryBudget, iterable: Iterable[T], batch_size: Optional[int]
) -> Iterator[list[T]]:
    """The batches of ``iterable``, each item once and in order (see ``MemoryBudget.chunks``)."""
    loop = _Loop(budget, batch_size, MAX_POLLS)
    it = iter(iterable)
    try:
        while True:
            size, window, start = loop.plan()
            try:
                batch = list(itertools.islice(it, size))
                if not batch:
                    window.close()
                    return
                yield batch
            except BaseException:
                window.close()
                raise
            loop.finish(len(batch), window, start)
            del batch
    finally:
        loop.end()


async def achunks(
    budget: MemoryBudget, iterable: Union[AsyncIterable[T], Iterable[T]], batch_size: Optional[int]
) -> AsyncIterator[list[T]]:
    """:func:`chunks` for ``async for``, over an async or a plain iterable."""
    loop = _Loop(budget, batch_size, 0)  # a waiting task would block the others' batches
    ait = iterable.__aiter__() if isinstance(iterable, AsyncIterable) else None
    it = None if ait is not None else iter(iterable)  # type: ignore[arg-type]
    try:
        while True:
            size, window, start = loop.plan()
            try:
                if ait is not None:
                    batch: list[T] = []
                    while len(batch) < size:
                        try:
                            batch.append(await ait.__anext__())
                        except StopAsyncIteration:
                            break
                else:
                    assert it is not None
                    batch = list(itertools.islice(it, size))
                if not batch:
                    window.close()
                    return
                yield batch
            except BaseException:
                window.close()
                raise
            loop.finish(len(batch), window, start)
            del batch
    finally:
        loop.end()
