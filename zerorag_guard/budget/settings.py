"""A budget's settings, checked once when the budget is made, and the ceiling of a budget
given no limit.

:meth:`Settings.parse` checks the arguments of :func:`~zerorag_guard.memory_budget` (sizes,
policy, batch sizes, scope, checkpoint) and says what was wrong with the value given; every use
of the budget then shares the same frozen settings, so a guarded call pays for none of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from ..config import parse_size_mb
from ..memory.limits import EFFECTIVE_LIMIT_SHARE
from ..monitor.monitor import MemoryMonitor
from .checkpoint import Checkpoint
from .scope import check_scope

ON_EXCEED = ("warn", "cleanup", "raise")


@dataclass(frozen=True)
class Settings:
    limit_mb: Optional[float]
    increase_mb: Optional[float]
    on_exceed: str
    batch_size: Optional[int]
    min_batch_size: int
    max_batch_size: Optional[int]
    name: Optional[str]
    monitor: Optional[MemoryMonitor]
    scope: str
    #: A path (each use of the block makes its own Checkpoint) or one shared Checkpoint.
    checkpoint: Union[str, Checkpoint, None] = None
    key: Optional[Callable[[Any], Any]] = None
    reset_checkpoint: bool = False

    @classmethod
    def parse(
        cls,
        limit_mb: Union[float, str, None],
        *,
        increase_mb: Union[float, str, None],
        on_exceed: str,
        batch_size: Optional[int],
        min_batch_size: int,
        max_batch_size: Optional[int],
        name: Optional[str],
        monitor: Optional[MemoryMonitor],
        scope: str,
        checkpoint: Union[str, os.PathLike[str], Checkpoint, None],
        key: Optional[Callable[[Any], Any]],
        reset_checkpoint: bool,
    ) -> Settings:
        """The arguments of :func:`~zerorag_guard.memory_budget`, checked: a ``ValueError``
        (a :class:`~zerorag_guard.ConfigError` for sizes) names the argument, the value and the
        expected form."""
        limit = (
            None
            if limit_mb is None
            else parse_size_mb(
                limit_mb, "limit_mb", "a size above 0 in MB, or a string such as '800 MB'"
            )
        )
        increase = (
            None
            if increase_mb is None
            else parse_size_mb(
                increase_mb, "increase_mb", "a size above 0 in MB, or a string such as '200 MB'"
            )
        )
        if on_exceed not in ON_EXCEED:
            raise ValueError(
                f"on_exceed={on_exceed!r} is not valid: expected one of "
                f"{', '.join(map(repr, ON_EXCEED))}"
            )
        lo = count(min_batch_size, "min_batch_size", allow_none=False)
        hi = count(max_batch_size, "max_batch_size")
        size = count(batch_size, "batch_size")
        assert lo is not None
        if hi is not None and lo > hi:
            raise ValueError(f"min_batch_size={lo} is above max_batch_size={hi}")
        if size is not None and (size < lo or (hi is not None and size > hi)):
            raise ValueError(
                f"batch_size={size} is outside min_batch_size={lo} .. "
                f"max_batch_size={hi if hi is not None else 'unbounded'}"
            )
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            checkpoint = Checkpoint(checkpoint, key, reset_checkpoint).path  # checks the form
        elif checkpoint is None and (key is not None or reset_checkpoint):
            raise ValueError("key= and reset_checkpoint= need checkpoint=PATH")
        return cls(
            limit,
            increase,
            on_exceed,
            size,
            lo,
            hi,
            name,
            monitor,
            check_scope(scope),
            checkpoint,
            key,
            reset_checkpoint,
        )


def count(value: Any, name: str, allow_none: bool = True) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid: expected a whole number >= 1")
    return value


_ceiling_cache: tuple[Any, Any, int] = (None, None, 0)


def default_ceiling_bytes(monitor: MemoryMonitor) -> int:
    """The ceiling of a budget given no limit: the main threshold, never above 90% of the
    effective limit. Cached on the (immutable) settings and limit objects: a guarded call
    reads it on every call."""
    global _ceiling_cache
    base, limit = monitor.base_thresholds, monitor.effective_limit()
    cached_base, cached_limit, value = _ceiling_cache
    if cached_base is not base or cached_limit is not limit:
        value = int(min(base.main, EFFECTIVE_LIMIT_SHARE * limit.bytes))
        _ceiling_cache = (base, limit, value)
    return value
