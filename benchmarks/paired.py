"""Paired timing: two callables run back to back, alternately first, so both see the same load.

Two benchmarks taken one after the other on a shared machine drift by more than the few
percent being measured; the median of pairs does not.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def paired_ratio(
    bare: Callable[[], Any], other: Callable[[], Any], quick: bool, pairs: int = 2000
) -> float:
    """Median time of ``other`` over median time of ``bare``, one call of each back to back (in
    alternating order) per pair, so both of a pair see the same load on the machine."""
    t_bare, t_other = paired_medians(bare, other, 4 if quick else pairs)
    return t_other / t_bare


def paired_medians(
    bare: Callable[[], Any], other: Callable[[], Any], pairs: int
) -> tuple[float, float]:
    """The median times (seconds) of ``bare`` and ``other`` over ``pairs`` pairs of calls."""
    clock = time.perf_counter
    t_bare: list[float] = []
    t_other: list[float] = []
    for i in range(pairs):
        first, second = (bare, other) if i % 2 == 0 else (other, bare)
        t0 = clock()
        first()
        t1 = clock()
        second()
        t2 = clock()
        a, b = (t_bare, t_other) if i % 2 == 0 else (t_other, t_bare)
        a.append(t1 - t0)
        b.append(t2 - t1)
    return statistics.median(t_bare), statistics.median(t_other)
