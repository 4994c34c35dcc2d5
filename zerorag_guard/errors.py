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
