"""What @memory_guarded costs per call, against the bare function and the tools people use today,
side by side in the same run on the same workloads.

Groups (ratios are computed by ``benchmarks/report.py`` from the JSON, against each group's
``bare`` row):

- ``noop``: a function that does nothing, so the row shows the guard's own cost in µs (and
  ``extra_us``: the paired medians' difference over 20,000 pairs);
- ``batch``: the pure-Python embed of a 100-item batch (~0.5 ms), where the guard must stay
  within 2%;
- ``batch-numpy``: the same embed with numpy.

Variants: ``bare``; ``functools.wraps`` (the floor for any decorator); ``memory_guarded``;
``memray.Tracker`` entered around each call (``memray per call``: how a profiler is used to
measure one call's memory, as the guard does, so it pays its start-up every call) and around the
whole benchmark (``memray whole run``: its steady-state cost, the fairest case for memray);
``tracemalloc`` started around the whole run; memory_profiler's ``@profile`` (line by line,
printing to /dev/null).

The guard's overhead of a few µs is far below the run-to-run drift of two benchmarks taken one
after the other on a busy machine, so its row also carries ``paired_ratio``: 2,000 pairs of one
bare and one guarded call back to back, the median guarded time over the median bare time.
"""

from __future__ import annotations

import functools
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import memory_profiler
import memray
import pytest
from paired import paired_medians, paired_ratio
from workloads import TEXTS, embed_batch, embed_batch_numpy

from zerorag_guard import memory_guarded

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def noop(x: Any) -> Any:
    return x


def with_wraps(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def memray_per_call(path: Path) -> Decorator:
    """Each call inside its own memray.Tracker writing to ``path``."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with memray.Tracker(destination=memray.FileDestination(path, overwrite=True)):
                return func(*args, **kwargs)

        return wrapper

    return decorate


def memory_profiler_profile(stream: Any) -> Decorator:
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        return memory_profiler.profile(func, stream=stream)  # type: ignore[no-any-return]

    return decorate


CORE = ["bare", "functools.wraps", "memory_guarded"]
TOOLS = ["memray per call", "memray whole run", "tracemalloc", "memory_profiler"]


@pytest.fixture
def devnull() -> Iterator[Any]:
    with open(os.devnull, "w") as f:
        yield f


def decorate(variant: str, func: Callable[..., Any], tmp: Path, devnull: Any) -> Any:
    if variant == "functools.wraps":
        return with_wraps(func)
    if variant == "memory_guarded":
        return memory_guarded(func)
    if variant == "memray per call":
        return memray_per_call(tmp / "memray.bin")(func)
    if variant == "memory_profiler":
        return memory_profiler_profile(devnull)(func)
    return func  # bare, and the tools that wrap the whole run instead of each call


def run(benchmark: Any, variant: str, func: Callable[..., Any], arg: Any, tmp: Path) -> Any:
    """Benchmark ``func(arg)``; the whole-run tools are started around the benchmark."""
    benchmark.extra_info["baseline"] = variant == "bare"
    if variant in CORE:
        func(arg)  # the first guarded call starts the process-wide monitor: not a per-call cost
    if variant == "tracemalloc":
        tracemalloc.start()
        try:
            return benchmark(func, arg)
        finally:
            tracemalloc.stop()
    if variant == "memray whole run":
        with memray.Tracker(destination=memray.FileDestination(tmp / "run.bin", overwrite=True)):
            return benchmark(func, arg)
    return benchmark(func, arg)


@pytest.mark.benchmark(group="noop")
@pytest.mark.parametrize("variant", CORE)
def test_noop(benchmark: Any, variant: str, tmp_path: Path, devnull: Any) -> None:
    func = decorate(variant, noop, tmp_path, devnull)
    assert run(benchmark, variant, func, 1, tmp_path) == 1
    if variant == "memory_guarded":
        bare, guarded = paired_medians(
            lambda: noop(1), lambda: func(1), 4 if benchmark.disabled else 20_000
        )
        benchmark.extra_info["extra_us"] = round((guarded - bare) * 1e6, 3)


@pytest.mark.benchmark(group="batch")
@pytest.mark.parametrize("variant", CORE + TOOLS)
def test_embed_batch(benchmark: Any, variant: str, tmp_path: Path, devnull: Any) -> None:
    func = decorate(variant, embed_batch, tmp_path, devnull)
    assert len(run(benchmark, variant, func, TEXTS, tmp_path)) == 100
    if variant == "memory_guarded":
        ratio = paired_ratio(lambda: embed_batch(TEXTS), lambda: func(TEXTS), benchmark.disabled)
        benchmark.extra_info["paired_ratio"] = round(ratio, 4)


@pytest.mark.benchmark(group="batch-numpy")
@pytest.mark.parametrize("variant", CORE + TOOLS)
def test_embed_batch_numpy(benchmark: Any, variant: str, tmp_path: Path, devnull: Any) -> None:
    func = decorate(variant, embed_batch_numpy, tmp_path, devnull)
    assert run(benchmark, variant, func, TEXTS, tmp_path).shape == (100, 64)
    if variant == "memory_guarded":
        ratio = paired_ratio(
            lambda: embed_batch_numpy(TEXTS), lambda: func(TEXTS), benchmark.disabled
        )
        benchmark.extra_info["paired_ratio"] = round(ratio, 4)
