"""The budget's front for functions: ``@memory_guarded`` and ``memory_budget()``.

``@memory_guarded`` runs every call of a function inside a fresh memory budget;
``memory_budget()`` makes a budget for ``with``, ``async with`` or, as a decorator, for every
call of a function (:class:`DecoratingBudget`: the budget itself knows nothing of decorators,
so :mod:`~zerorag_guard.budget.budget` does not import this module).

The wrapper is chosen once, at decoration time, from what the function is (plain, coroutine,
generator, async generator), as tenacity does; wrapt keeps the signature, ``__wrapped__``,
descriptors (methods, class- and staticmethods) and ``inspect`` answers intact. Each call is
recorded in the monitor's per-operation statistics (calls, errors, time, peak).

With ``chunk=`` the named sequence arguments are split in step into adaptive chunks and the
function is called once per chunk; list results are concatenated. When a chunk fails, the
exception gets ``zerorag_processed``: the number of items whose chunks completed.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union, cast

import wrapt

from ..monitor.monitor import MemoryMonitor
from .budget import MemoryBudget
from .checkpoint import Checkpoint
from .guard import _Guard, _plain, _qualified

if TYPE_CHECKING:
    from .isolation import Isolated

F = TypeVar("F", bound=Callable[..., Any])


def wrap(
    func: F,
    spec: MemoryBudget,
    *,
    record: bool = True,
    chunk: Union[str, Sequence[str], None] = None,
    name: Optional[str] = None,
    isolated: Optional[Callable[[str], Isolated]] = None,
) -> F:
    """Wrap ``func`` so each call runs in a fresh copy of ``spec``; the kind of wrapper is chosen
    here, once, so an async function stays a coroutine function and a generator a generator.
    ``isolated`` makes the :class:`~zerorag_guard.budget.isolation.Isolated` that runs its calls."""
    if not callable(func) and not isinstance(func, (classmethod, staticmethod)):
        raise TypeError(
            f"memory_guarded/memory_budget decorate a function, got "
            f"{type(func).__name__} {func!r}; did you mean memory_guarded(limit_mb=...)?"
        )
    f = _plain(func)
    if isolated is not None and (inspect.isasyncgenfunction(f) or inspect.isgeneratorfunction(f)):
        raise TypeError(
            f"isolate=True cannot run generator {_qualified(func)} in a worker: its items would "
            "have to cross the pipe one by one; return a list instead"
        )
    guard = _Guard(func, spec, record, chunk, name, isolated)
    if inspect.isasyncgenfunction(f):
        wrapper = guard.agen
    elif inspect.iscoroutinefunction(f):
        wrapper = guard.acall
    elif inspect.isgeneratorfunction(f):
        wrapper = guard.gen
    else:
        wrapper = guard.call
    return cast(F, wrapt.FunctionWrapper(func, wrapper))


def memory_guarded(
    func: Optional[F] = None,
    *,
    limit_mb: Union[float, str, None] = None,
    increase_mb: Union[float, str, None] = None,
    on_exceed: str = "cleanup",
    chunk: Union[str, Sequence[str], None] = None,
    batch_size: Optional[int] = None,
    name: Optional[str] = None,
    min_batch_size: int = 1,
    max_batch_size: Optional[int] = None,
    monitor: Optional[MemoryMonitor] = None,
    scope: str = "auto",
    isolate: Union[bool, str] = False,
    workers: int = 1,
    timeout: Optional[float] = None,
) -> Any:
    """Decorate a function so that each call runs in a fresh memory budget.

    Bare (``@memory_guarded``) or with arguments; works on plain, async, generator and
    async-generator functions, methods, class- and staticmethods. The budget arguments are
    those of :func:`~zerorag_guard.memory_budget` and are checked here, at decoration. ``chunk``
    names one argument or a tuple of arguments: sequences of the same length that are split in
    step into adaptive chunks, one call per chunk, list results concatenated.

    ``isolate=True`` runs each call in one of ``workers`` kept worker processes capped at
    ``limit_mb`` (required): a call the cap stops raises
    :class:`~zerorag_guard.WorkerOutOfMemory` here while this process goes on; ``timeout``
    (seconds) bounds a call. ``isolate="cgroup"`` or ``"rlimit"`` insists on one kind of cap
    (see :mod:`zerorag_guard.budget.isolation`).
    """
    mode = None
    if isolate is not False:  # the isolation machinery loads only for those who use it
        from .isolation import isolation_mode

        mode = isolation_mode(isolate)
    if mode is None and (workers != 1 or timeout is not None):
        raise ValueError("workers= and timeout= are for isolated calls: add isolate=True")
    if mode is not None and (limit_mb is None or increase_mb is not None or scope != "auto"):
        raise ValueError(
            "isolate=True needs limit_mb= (the worker's cap), and takes no increase_mb= or "
            "scope=: the worker's memory is its own"
        )
    spec = MemoryBudget(
        limit_mb,
        increase_mb=increase_mb,
        on_exceed=on_exceed,
        batch_size=batch_size,
        min_batch_size=min_batch_size,
        max_batch_size=max_batch_size,
        name=name,
        monitor=monitor,
        scope=scope,
    )

    isolated = None
    if mode is not None:
        cap = spec._settings.limit_mb
        assert cap is not None

        def isolated(label: str, f: Any = None) -> Isolated:
            from .isolation import Isolated

            return Isolated(_plain(f), cap, workers, mode, timeout, label)

    def decorate(f: F) -> F:
        make = None if isolated is None else functools.partial(isolated, f=f)
        return wrap(f, spec, record=True, chunk=chunk, name=name, isolated=make)

    if func is not None:
        return decorate(func)
    return decorate


class DecoratingBudget(MemoryBudget):
    """What :func:`memory_budget` returns: a :class:`~zerorag_guard.MemoryBudget` that is also a
    decorator (the budget knows nothing of decorators; this front adds them)."""

    def __call__(self, func: F) -> F:
        """Use as a decorator: every call runs in a fresh copy of this budget."""
        return wrap(func, self, record=False)


def memory_budget(
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
) -> DecoratingBudget:
    """A memory budget, for ``with``, ``async with`` or as a decorator (a
    :class:`DecoratingBudget`).

    ``limit_mb`` caps process memory inside the block (default: the monitor's main threshold,
    never above 90% of the effective limit); ``increase_mb`` caps growth over memory at entry;
    the lower wins. ``on_exceed`` is ``"warn"`` (alert and log), ``"cleanup"`` (escalate cleanup
    and shrink batches; raise only when even that fails) or ``"raise"`` (raise at the first
    check over the limit). ``batch_size`` (default ``BATCH_SIZE``), ``min_batch_size`` and
    ``max_batch_size`` bound :meth:`MemoryBudget.chunks`. ``monitor`` defaults to the
    process-wide one (tests pass one with injected readings).

    ``scope`` says what the ceiling counts (see :mod:`zerorag_guard.budget.scope`): ``"process"``
    (this process's RSS), ``"tree"`` (this process and its descendants), ``"cgroup"`` (the
    memory cgroup's working set) or ``"auto"`` (the default: this process's RSS, and 90% of a
    cgroup limit on the cgroup's working set). Concurrent loops that share what a scope counts
    reserve their next batch's memory, so no two plan on the same headroom.

    ``checkpoint`` (a file path) makes the block's loops resume after a kill (see
    :mod:`zerorag_guard.budget.checkpoint`): a rerun skips the items a previous run completed, a
    finished job does nothing until ``reset_checkpoint=True``, and ``key`` (a function of an
    item) checks that the input at the cursor is the one the checkpoint recorded.
    """
    return DecoratingBudget(
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
