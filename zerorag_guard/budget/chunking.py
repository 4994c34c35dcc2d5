"""The loops behind :meth:`MemoryBudget.chunks` and :meth:`MemoryBudget.achunks`.

Before each batch the budget's policy runs and the :class:`~zerorag_guard.budget.sizing.BatchSizer`
picks a size for the headroom left; a kernel peak window is opened; the batch is pulled from the
iterable and handed out. When the loop asks for the next batch, the previous one counts as
processed and its exact peak teaches the sizer what an item costs. With a checkpoint, the loop
first skips what a previous run completed, then records each batch as it is handed out and as it
completes (see :mod:`zerorag_guard.budget.checkpoint`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union

from .scope import ALONE, MAX_POLLS, Scope
from .sizing import NEAR_LIMIT, SAFETY, BatchSizer

if TYPE_CHECKING:
    from .budget import MemoryBudget

T = TypeVar("T")
logger = logging.getLogger("zerorag_guard")
_NOTHING: Any = object()


class _Loop:
    """One chunking loop's state: the sizer, its scope and the budget it reports to."""

    def __init__(
        self, budget: MemoryBudget, batch_size: Optional[int], first: Optional[int], polls: int
    ) -> None:
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
        self.checkpoint = budget._loop_checkpoint()
        self.done = 0  # items of this loop done, skipped ones included
        self._handed = 0.0  # when the batch was handed out: its time teaches the sizer's pace
        self._clock = budget.monitor.clock
        self._gave_back = budget.monitor.gave_back  # see plan()
        self._ended = False
        if first is not None:
            self.sizer.start_at(first)
        if self.checkpoint is not None:
            self.done = self.checkpoint.skip
            budget.skipped += self.done
            budget.processed += self.done
            if self.checkpoint.finished:
                level = logging.WARNING if self.checkpoint.job_complete else logging.INFO
                logger.log(level, "%s", self.checkpoint.describe())
            elif self.checkpoint.start_size is not None:
                self.sizer.start_at(self.checkpoint.start_size)

    @property
    def finished(self) -> bool:
        """Whether a previous run (see ``checkpoint=``) already did all of this loop."""
        return self.checkpoint is not None and self.checkpoint.finished

    def skipped(self, seen: int, last: Any) -> None:
        """The resumed loop skipped ``seen`` items, the last of them ``last``."""
        cp = self.checkpoint
        assert cp is not None
        if seen < self.done:
            raise cp.too_short()
        cp.check_skipped(seen - 1, last)

    def begin(self, batch: list[Any]) -> None:
        """A batch is about to be handed out."""
        if self.checkpoint is not None:
            self.checkpoint.begin(self.done, batch)
        self._handed = self._clock()

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
        crowded = reading > NEAR_LIMIT * alone
        if sizer.warmed and (floor := sizer.floor(reading)) < reading:
            # Memory the allocator keeps that batches were seen to reuse is room, not a reason
            # to trim until it crowds the share of the room a batch plans on: a trim hands back
            # what the next batch faults again, and the floor no longer knows it for reusable
            # (the real model at 250 MB over it: 80 MB trimmed at 90% of the ceiling, 86 MB
            # faulted again by the next batch, and batches of 4 after it where 7 and 8 ran).
            crowded = reading > floor + SAFETY * (alone - floor)
        # The first batch's cost, a first call's warm-up in it, says little of the next ones:
        # no reason for an aggressive cleanup (0.57 s with the real model loaded, for 10 MB).
        tight = crowded or (
            sizer.warmed and SAFETY * (alone - reading) < sizer.need(2 * sizer.min_size, reading)
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
        if monitor.gave_back != self._gave_back:
            # A cleanup since the last batch gave memory back, this loop's or the monitor's own
            # (its sampler's, at its levels): what the allocator kept is gone, no batch reuses it.
            self._gave_back = monitor.gave_back
            sizer.released()
        if monitor.under_pressure:
            sizer.hold_back()  # the kernel is already reclaiming hard: before any limit is hit
        reading, self.limit = scope.reserve(sizer, reading, ceiling, self.polls)
        size = sizer.next_size(reading, self.limit)
        exact = sizer.needs_exact_peak(size, reading, self.limit)
        return size, scope.window(exact, reading), reading

    def finish(self, batch: list[Any], window: Any, start_rss: int) -> None:
        """After a batch: count it as processed and learn its cost from its peak and time."""
        seconds = self._clock() - self._handed
        budget = self.budget
        count = len(batch)
        budget.processed += count
        self.done += count
        if self.checkpoint is not None:
            self.checkpoint.finish(self.done, batch)
        budget.batch_sizes.append(count)
        budget.monitor.record_batch(count)
        if window.exact:
            self.peak = int(window.close())
        else:
            self._reading = budget.monitor.probe.rss_bytes()
            window.note(self._reading)
            self.peak = int(window.close(read=False))
        budget._note_peak(self.peak)
        self.sizer.learn(count, start_rss, self.peak, self.limit, window.exact, seconds)

    def out_of_items(self) -> None:
        """The iterable ran out: the loop is complete."""
        self._ended = True
        if self.checkpoint is not None:
            self.checkpoint.end(self.done)

    def end(self) -> None:
        """The loop is done (finished, failed or abandoned): its reservation ends, and the
        cgroup's peak over it goes to the budget."""
        try:
            if self.checkpoint is not None and not self._ended:
                self.checkpoint.interrupt()
        finally:
            self.budget._note_group_peak(*self.scope.end())


def _skip(it: Iterator[Any], count: int) -> tuple[int, Any]:
    """Pull ``count`` items: how many there were, and the last."""
    last, seen = _NOTHING, 0
    for item in itertools.islice(it, count):
        last, seen = item, seen + 1
    return seen, last


def chunks(
    budget: MemoryBudget,
    iterable: Iterable[T],
    batch_size: Optional[int],
    first: Optional[int] = None,
) -> Iterator[list[T]]:
    """The batches of ``iterable``, each item once and in order (see ``MemoryBudget.chunks``)."""
    loop = _Loop(budget, batch_size, first, MAX_POLLS)
    it = iter(iterable)
    try:
        if loop.finished:
            return
        if loop.done:
            loop.skipped(*_skip(it, loop.done))
        while True:
            size, window, start = loop.plan()
            try:
                batch = list(itertools.islice(it, size))
                if not batch:
                    window.close()
                    loop.out_of_items()
                    return
                loop.begin(batch)
                yield batch
            except BaseException:
                window.close()
                raise
            loop.finish(batch, window, start)
            del batch
    finally:
        loop.end()


async def achunks(
    budget: MemoryBudget,
    iterable: Union[AsyncIterable[T], Iterable[T]],
    batch_size: Optional[int],
    first: Optional[int] = None,
) -> AsyncIterator[list[T]]:
    """:func:`chunks` for ``async for``, over an async or a plain iterable."""
    loop = _Loop(budget, batch_size, first, 0)  # a waiting task would block the others' batches
    ait = iterable.__aiter__() if isinstance(iterable, AsyncIterable) else None
    it = None if ait is not None else iter(iterable)  # type: ignore[arg-type]
    try:
        if loop.finished:
            return
        if loop.done:
            if ait is not None:
                last, seen = _NOTHING, 0
                while seen < loop.done:
                    try:
                        last, seen = await ait.__anext__(), seen + 1
                    except StopAsyncIteration:
                        break
                loop.skipped(seen, last)
            else:
                assert it is not None
                loop.skipped(*_skip(it, loop.done))
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
                    loop.out_of_items()
                    return
                loop.begin(batch)
                yield batch
            except BaseException:
                window.close()
                raise
            loop.finish(batch, window, start)
            del batch
    finally:
        loop.end()
