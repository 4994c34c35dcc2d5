"""The library's exceptions, in one place so every layer can raise them without import cycles."""

from __future__ import annotations

from typing import Any, Optional


class ConfigError(ValueError):
    """A setting is wrong: the message names the variable, the value given and the form expected."""

    def __init__(self, variable: str, value: Any, expected: str) -> None:
        self.variable = variable
        self.value = value
        self.expected = expected
        super().__init__(f"{variable}={value!r} is not valid: expected {expected}")


class MemoryBudgetExceeded(MemoryError):
    """A budget could not be kept.

    ``processed`` is the resume cursor: the number of items whose batch completed, so
    ``items[processed:]`` is exactly what is left to do. ``smallest_batch`` is set when even
    batches of ``min_batch_size`` (that many items) peaked over the ceiling after an aggressive
    cleanup: ``rss_mb`` is then what such a batch needs, the budget cannot be kept at all.
    """

    def __init__(
        self,
        rss_mb: float,
        limit_mb: float,
        processed: int = 0,
        level: Optional[str] = None,
        name: Optional[str] = None,
        smallest_batch: Optional[int] = None,
    ) -> None:
        self.rss_mb = rss_mb
        self.limit_mb = limit_mb
        self.processed = processed
        self.level = level
        self.name = name
        self.smallest_batch = smallest_batch
        where = f" in {name!r}" if name else ""
        if smallest_batch is not None:
            items = f"{smallest_batch} item{'s' * (smallest_batch != 1)}"
            message = (
                f"memory budget cannot be kept{where}: a batch of {items} peaks at "
                f"{rss_mb:,.1f} MB; the ceiling is {limit_mb:,.1f} MB (after an aggressive "
                f"cleanup); {processed} items processed, resume from there"
            )
        else:
            message = (
                f"memory budget exceeded{where}: {rss_mb:.1f} MB used, limit {limit_mb:.1f} MB "
                f"(level {level}); {processed} items processed, resume from there"
            )
        super().__init__(message)


class WorkerOutOfMemory(MemoryBudgetExceeded):
    """An isolated call's worker ran out of its memory cap (see
    :mod:`zerorag_guard.budget.isolation`).

    ``limit_mb`` is the worker's cap and ``peak_mb`` (also ``rss_mb``) the most the worker was
    seen to hold: its cgroup's peak where the kernel killed it, its own peak where an allocation
    failed under ``RLIMIT_DATA``. The caller's process was not touched; the worker is replaced.

    With ``chunk=``, the items that fail even alone are gathered and this is raised once every
    other item is done: ``oversized`` lists ``(index, peak_mb)`` of each (its position in the
    chunked arguments), ``results`` holds what the other items returned, concatenated in order
    as an undisturbed call would, the oversized items left out.
    """

    def __init__(
        self,
        limit_mb: float,
        peak_mb: float,
        name: Optional[str] = None,
        *,
        processed: int = 0,
        detail: str = "",
        oversized: Optional[list[tuple[int, float]]] = None,
        results: Any = None,
    ) -> None:
        self.peak_mb = peak_mb
        self.oversized = list(oversized or [])
        self.results = results
        self.detail = detail
        super().__init__(peak_mb, limit_mb, processed, "CRITICAL", name)
        where = f" {name!r}" if name else ""
        if self.oversized:
            listed = ", ".join(f"#{i} ({mb:,.1f} MB)" for i, mb in self.oversized[:10])
            more = f" and {len(self.oversized) - 10} more" if len(self.oversized) > 10 else ""
            text = (
                f"isolated call{where}: {len(self.oversized)} item(s) need more than the "
                f"worker's cap of {limit_mb:,.1f} MB even alone: {listed}{more}; every other "
                f"item was processed (their results are on .results)"
            )
        else:
            text = (
                f"isolated call{where}: the worker ran out of its {limit_mb:,.1f} MB cap "
                f"(peak {peak_mb:,.1f} MB){': ' + detail if detail else ''}; the worker was "
                f"replaced"
            )
        self.args = (text,)


class WorkerCrashed(RuntimeError):
    """An isolated call's worker died of something other than its memory cap (a signal, an
    exit), or could not be started. The worker is replaced and the pool goes on."""


class WorkerTimeout(WorkerCrashed, TimeoutError):
    """An isolated call ran past its ``timeout=``: its worker was killed and replaced."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, corrupt, of another input (``key=``), or
    in use by another run. The message names the file; nothing is restarted silently."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"checkpoint {path}: {problem}")
