"""The guard around each call of a guarded function: its budget, its chunks, its record.

:func:`~zerorag_guard.budget.guarded.wrap` puts a :class:`_Guard` around a function; its ``call``,
``acall``, ``gen`` and ``agen`` run one call of a plain, coroutine, generator or async
generator function inside a fresh copy of the budget, split the ``chunk=`` arguments into
adaptive chunks, and record the call in the monitor's per-operation statistics.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ..memory.probes import MB
from ..monitor.monitor import MemoryMonitor
from ..monitor.process import get_monitor
from .budget import MemoryBudget, current_budget
from .settings import default_ceiling_bytes
from .sizing import BatchSizer

if TYPE_CHECKING:
    from .isolation import Isolated


def _plain(func: Any) -> Any:
    return func.__func__ if isinstance(func, (classmethod, staticmethod)) else func


def _qualified(func: Any) -> str:
    f = _plain(func)
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"


def _chunk_names(func: Any, chunk: Union[str, Sequence[str], None]) -> tuple[str, ...]:
    if chunk is None:
        return ()
    names = (chunk,) if isinstance(chunk, str) else tuple(chunk)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"chunk={chunk!r} is not valid: expected an argument name or a tuple of argument names"
        )
    f = _plain(func)
    if inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f):
        raise ValueError(
            f"chunk= cannot split the arguments of generator {_qualified(func)}: "
            "it yields instead of returning results to concatenate"
        )
    params = inspect.signature(f).parameters
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(
            f"chunk names {', '.join(map(repr, missing))} which "
            f"{_qualified(func)} does not take; its arguments are "
            f"{', '.join(params)}"
        )
    return names


class _Guard:
    """Per-decoration state: the budget's settings, the operation name, the chunked names."""

    def __init__(
        self,
        func: Any,
        spec: MemoryBudget,
        record: bool,
        chunk: Union[str, Sequence[str], None],
        name: Optional[str],
        isolated: Optional[Callable[[str], Isolated]] = None,
    ) -> None:
        self.spec = spec
        self.record = record
        self.name = name or spec.name or _qualified(func)
        self.chunk = _chunk_names(func, chunk)
        self._signature = inspect.signature(_plain(func))
        self.isolated = None if isolated is None else isolated(self.name)
        # Most guarded calls have no ceiling of their own and run under no other budget: for
        # them a check of the sampler's latest reading against the cached default ceiling is
        # the whole budget (~2 µs a call, no system call).
        self.lean = not self.chunk and not spec._limits_memory

    def _done(
        self, monitor: MemoryMonitor, budget: MemoryBudget, start: float, error: bool
    ) -> None:
        budget._exit(error=error)
        if self.record:
            monitor.record_operation(self.name, time.perf_counter() - start, budget.peak_mb, error)

    # -- plain and coroutine functions ------------------------------------------------------------
    def call(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if self.isolated is not None:
            if self.isolated.in_worker():  # the worker runs the function undecorated
                return wrapped(*args, **kwargs)
            return self._isolated(wrapped, instance, args, kwargs)
        if self.lean:
            monitor = self.spec._settings.monitor or get_monitor()
            read = monitor.recent_rss_bytes
            rss = read()
            if rss <= default_ceiling_bytes(monitor) and current_budget() is None:
                start = time.perf_counter()
                error = True
                try:
                    result = wrapped(*args, **kwargs)
                    error = False
                    return result
                finally:
                    if self.record:
                        monitor.record_operation(
                            self.name, time.perf_counter() - start, max(rss, read()) / MB, error
                        )
        budget = self.spec._fresh()
        monitor = budget.monitor
        budget._enter(exact_peak=bool(self.chunk))
        start = time.perf_counter()
        error = True
        try:
            if self.chunk:
                result = self._chunked(budget, wrapped, instance, args, kwargs)
            else:
                result = wrapped(*args, **kwargs)
            error = False
            return result
        finally:
            self._done(monitor, budget, start, error)

    async def acall(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if self.isolated is not None:
            if self.isolated.in_worker():
                return await wrapped(*args, **kwargs)
            import asyncio  # loaded already where a coroutine runs

            return await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(self._isolated, wrapped, instance, args, kwargs)
            )
        budget = self.spec._fresh()
        monitor = budget.monitor
        budget._enter(exact_peak=bool(self.chunk))
        start = time.perf_counter()
        error = True
        try:
            if self.chunk:
                result = await self._achunked(budget, wrapped, instance, args, kwargs)
            else:
                result = await wrapped(*args, **kwargs)
            error = False
            return result
        finally:
            self._done(monitor, budget, start, error)

    # -- isolate= ---------------------------------------------------------------------------------
    def _isolated(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        isolated = self.isolated
        assert isolated is not None
        if instance is not None and not inspect.isclass(instance):
            raise TypeError(
                f"{self.name}: isolate=True runs module-level functions and static methods in a "
                "worker, not methods bound to an instance"
            )
        monitor = self.spec.monitor
        start = time.perf_counter()
        peak, error = 0.0, True
        try:
            if self.chunk:
                s = self.spec._settings
                bound, sequences, n = self._split(wrapped, instance, args, kwargs)
                target = s.batch_size or monitor.config.batch_size
                sizer = BatchSizer(target, s.min_batch_size, s.max_batch_size)
                result, peak = isolated.call_chunked(
                    n,
                    lambda a, b: self._call_chunk(bound, sequences, list(range(a, b))),
                    sizer,
                    _mark,
                    _combine,
                )
            else:
                result, peak = isolated.call(args, kwargs)
            error = False
            return result
        finally:
            if self.record:
                monitor.record_operation(self.name, time.perf_counter() - start, peak, error)

    # -- generators: the budget spans the whole iteration -----------------------------------------
    def gen(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        budget = self.spec._fresh()
        monitor = budget.monitor
        budget.check()
        start = time.perf_counter()
        error = False
        try:
            return (yield from wrapped(*args, **kwargs))
        except GeneratorExit:
            raise
        except BaseException:
            error = True
            raise
        finally:
            self._done(monitor, budget, start, error)

    async def agen(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        budget = self.spec._fresh()
        monitor = budget.monitor
        budget.check()
        start = time.perf_counter()
        error = False
        try:
            async for item in wrapped(*args, **kwargs):
                yield item
        except GeneratorExit:
            raise
        except BaseException:
            error = True
            raise
        finally:
            self._done(monitor, budget, start, error)

    # -- chunk= -----------------------------------------------------------------------------------
    def _split(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        # wrapt hands over the bound callable for methods: bind against its own signature.
        sig = inspect.signature(wrapped) if hasattr(wrapped, "__self__") else self._signature
        bound = sig.bind(*args, **kwargs)
        sequences = [bound.arguments[n] for n in self.chunk if n in bound.arguments]
        if len(sequences) != len(self.chunk):
            absent = [n for n in self.chunk if n not in bound.arguments]
            raise ValueError(f"{self.name}: chunked argument(s) {', '.join(absent)} not given")
        lengths = {n: len(s) for n, s in zip(self.chunk, sequences)}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"{self.name}: chunked arguments must have the same length, got "
                + ", ".join(f"{n}={k}" for n, k in lengths.items())
            )
        return bound, sequences, next(iter(lengths.values()))

    def _call_chunk(
        self, bound: Any, sequences: list[Any], batch: Sequence[int]
    ) -> tuple[Any, Any]:
        start, stop = batch[0], batch[-1] + 1
        for name, seq in zip(self.chunk, sequences):
            bound.arguments[name] = seq[start:stop]
        return bound.args, bound.kwargs

    def _chunked(
        self, budget: MemoryBudget, wrapped: Any, instance: Any, args: Any, kwargs: Any
    ) -> Any:
        bound, sequences, n = self._split(wrapped, instance, args, kwargs)
        results = []
        try:
            for batch in budget.chunks(range(n)):
                a, k = self._call_chunk(bound, sequences, batch)
                results.append(wrapped(*a, **k))
        except Exception as exc:
            _mark(exc, budget.processed)
            raise
        return _combine(results)

    async def _achunked(
        self, budget: MemoryBudget, wrapped: Any, instance: Any, args: Any, kwargs: Any
    ) -> Any:
        bound, sequences, n = self._split(wrapped, instance, args, kwargs)
        results = []
        try:
            for batch in budget.chunks(range(n)):
                a, k = self._call_chunk(bound, sequences, batch)
                results.append(await wrapped(*a, **k))
        except Exception as exc:
            _mark(exc, budget.processed)
            raise
        return _combine(results)


def _mark(exc: BaseException, processed: int) -> None:
    if not hasattr(exc, "zerorag_processed"):
        try:
            exc.zerorag_processed = processed  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - exceptions with __slots__
            pass


def _combine(results: list[Any]) -> Any:
    """Concatenate list results; all-None stays None; anything else is a list per chunk."""
    if all(isinstance(r, list) for r in results):
        return [item for r in results for item in r]
    if all(r is None for r in results):
        return None
    return results
