"""Isolated calls: ``memory_guarded(isolate=True, limit_mb=...)`` runs each call in a capped worker.

A budget sizes batches from what items cost; it cannot save a process from one item that needs
more than the machine holds, nor from a native spike between two readings. An isolated call
runs in a worker process kept between calls, capped at ``limit_mb``: a child memory cgroup
where the hierarchy is writable (the kernel's OOM killer then kills the worker only; see
:mod:`zerorag_guard.budget.worker_cap`), ``RLIMIT_DATA`` elsewhere (an allocation past it fails
in the worker; see :func:`zerorag_guard.budget.worker.cap_data`). A call the cap stops raises
:class:`~zerorag_guard.WorkerOutOfMemory` in the caller, with the cap and the peak, and the
worker is replaced; the caller's process is never the one killed.

Functions travel by name (module and qualified name), as ``ProcessPoolExecutor`` pickles them:
module-level functions and static methods, arguments and results that pickle. An exception in
the worker comes back with its type and the worker's traceback (as ``__cause__``); a call past
``timeout=`` or a worker dead of another signal raises :class:`~zerorag_guard.WorkerCrashed`
(:class:`~zerorag_guard.WorkerTimeout`), and the pool (:mod:`~zerorag_guard.budget.pool`) goes on
with a new worker.

With ``chunk=``, chunks are sized from the worker's own exact peaks against its cap (the same
:class:`~zerorag_guard.budget.sizing.BatchSizer` as budgets). A chunk whose worker the cap
stopped is split in halves and retried until the items that do not fit even alone are found;
every other item runs once, and :class:`~zerorag_guard.WorkerOutOfMemory` is raised at the end
with ``oversized`` (their positions and peaks) and ``results`` (the others', in order).
"""

from __future__ import annotations

import collections
import pickle
from typing import Any, Callable, Optional

from ..errors import WorkerOutOfMemory
from ..memory.probes import MB
from . import worker as worker_side
from .pool import Outcome, WorkerPool
from .sizing import BatchSizer

MODES = ("auto", "cgroup", "rlimit")


def isolation_mode(isolate: Any) -> Optional[str]:
    """``isolate=`` as a mode: None (off), ``auto``, ``cgroup`` or ``rlimit``."""
    if isolate is False or isolate is None:
        return None
    if isolate is True:
        return "auto"
    if isinstance(isolate, str) and isolate in MODES:
        return isolate
    raise ValueError(
        f"isolate={isolate!r} is not valid: expected True, False, or one of "
        f"{', '.join(map(repr, MODES))}"
    )


def in_worker() -> bool:
    """Whether this process is an isolated worker (a guarded call then runs undecorated)."""
    return worker_side.IN_WORKER


class Isolated:
    """An isolated function: where it is found in a worker, its pool, and how calls go."""

    def __init__(
        self,
        func: Any,
        limit_mb: float,
        workers: int,
        mode: str,
        timeout: Optional[float],
        name: str,
    ) -> None:
        module = getattr(func, "__module__", None)
        qualname = getattr(func, "__qualname__", "")
        if not module or not qualname or "<" in qualname:
            raise TypeError(
                f"isolate=True cannot send {name} to a worker: it is found there by module and "
                "name, as ProcessPoolExecutor pickles functions, so it must be a module-level "
                "function or a static method (not a lambda, a nested function or a closure)"
            )
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers={workers!r} is not valid: expected a whole number >= 1")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ValueError(f"timeout={timeout!r} is not valid: expected seconds above 0")
        self.module, self.qualname = module, qualname
        self.name = name
        self.limit_mb = limit_mb
        self.timeout = timeout
        self.pool = WorkerPool(int(limit_mb * MB), workers, mode, name, module)

    in_worker = staticmethod(in_worker)

    def _message(self, args: Any, kwargs: Any) -> bytes:
        return pickle.dumps(
            (self.module, self.qualname, tuple(args), dict(kwargs)),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def _oom(self, outcome: Outcome, processed: int = 0) -> WorkerOutOfMemory:
        return WorkerOutOfMemory(
            self.limit_mb, outcome.peak / MB, self.name, processed=processed, detail=outcome.detail
        )

    def call(self, args: Any, kwargs: Any) -> tuple[Any, float]:
        """One isolated call: its result and the worker's peak in MB."""
        outcome = self.pool.run(self._message(args, kwargs), self.timeout, self.name)
        outcome.raise_error()
        if not outcome.ok:
            raise self._oom(outcome)
        return outcome.value, outcome.peak / MB

    def call_chunked(
        self,
        count: int,
        arguments: Callable[[int, int], tuple[Any, Any]],
        sizer: BatchSizer,
        mark: Callable[[BaseException, int], None],
        combine: Callable[[list[Any]], Any],
    ) -> tuple[Any, float]:
        """Run ``count`` items in chunks, ``arguments(start, stop)`` giving each chunk's call
        arguments; returns the chunks' results combined, in order, and the largest peak in
        MB. A chunk's failure gets ``mark(exc, items before it)``."""
        limit = self.pool.limit
        results: list[Any] = []
        oversized: list[tuple[int, float]] = []
        retry: collections.deque[tuple[int, int]] = collections.deque()
        position = rss = peak = 0
        while retry or position < count:
            if retry:
                start, stop = retry.popleft()
            else:
                start = position
                stop = position = min(count, start + sizer.next_size(rss, limit))
            a, k = arguments(start, stop)
            try:
                outcome = self.pool.run(self._message(a, k), self.timeout, self.name)
                outcome.raise_error()
            except Exception as exc:
                mark(exc, start)
                raise
            peak = max(peak, outcome.peak)
            if outcome.ok:
                results.append(outcome.value)
                sizer.learn(stop - start, outcome.start, outcome.peak, limit)
                rss = outcome.start
                continue
            sizer.learn(stop - start, rss, max(outcome.peak, limit + 1), limit)  # halves next
            if stop - start == 1:
                oversized.append((start, outcome.peak / MB))
            else:
                middle = (start + stop) // 2
                retry.extendleft([(middle, stop), (start, middle)])
        if oversized:
            raise WorkerOutOfMemory(
                self.limit_mb,
                max(mb for _, mb in oversized),
                self.name,
                processed=count,
                oversized=oversized,
                results=combine(results),
            )
        return combine(results), peak / MB
