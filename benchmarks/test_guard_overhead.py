"""What @memory_guarded costs per call, against the bare function in the same run.

Groups: ``noop`` (a function that does nothing: the guard's own cost in µs) and ``batch`` (the
~1 ms pure-Python embed of a 100-item batch, where the guard must stay within 2%). Ratios are
computed by ``benchmarks/report.py`` from the JSON, against the ``bare`` row of each group.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import pytest
from workloads import TEXTS, embed_batch

from zerorag_guard import memory_guarded


def noop(x: Any) -> Any:
    return x


def with_wraps(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


VARIANTS = {
    "bare": lambda f: f,
    "functools.wraps": with_wraps,
    "memory_guarded": memory_guarded,
}


@pytest.mark.benchmark(group="noop")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_noop(benchmark: Any, variant: str) -> None:
    func = VARIANTS[variant](noop)
    benchmark.extra_info["baseline"] = variant == "bare"
    assert benchmark(func, 1) == 1


@pytest.mark.benchmark(group="batch")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_embed_batch(benchmark: Any, variant: str) -> None:
    func = VARIANTS[variant](embed_batch)
    benchmark.extra_info["baseline"] = variant == "bare"
    assert len(benchmark(func, TEXTS)) == 100
