"""What an isolated call costs per call: a kept worker against the bare call and against
``ProcessPoolExecutor.submit().result()``, the standard way to run a call in another process,
in the same run (group ``isolated-call``).

The ``isolated`` row carries ``extra_us`` (the paired medians' difference against the bare
call: the pipe, the pickling, the worker's exact peak window) and ``vs_process_pool`` (paired
medians against a one-worker ``ProcessPoolExecutor``, forkserver, on the same small argument).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
from isolated_calls import bare_echo, echo
from paired import paired_medians

VARIANTS = ("bare", "isolated", "ProcessPoolExecutor")


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as ex:
        yield ex


@pytest.mark.benchmark(group="isolated-call")
@pytest.mark.parametrize("variant", VARIANTS)
def test_isolated_call(benchmark: Any, variant: str, pool: ProcessPoolExecutor) -> None:
    benchmark.extra_info["baseline"] = variant == "bare"
    calls = {
        "bare": lambda: bare_echo(7),
        "isolated": lambda: echo(7),
        "ProcessPoolExecutor": lambda: pool.submit(bare_echo, 7).result(),
    }
    call = calls[variant]
    assert call() == 7  # the first call starts the worker: not a per-call cost
    assert benchmark(call) == 7
    if variant == "isolated":
        pairs = 4 if benchmark.disabled else 2000
        bare, isolated = paired_medians(calls["bare"], call, pairs)
        benchmark.extra_info["extra_us"] = round((isolated - bare) * 1e6, 1)
        other, isolated = paired_medians(calls["ProcessPoolExecutor"], call, pairs)
        benchmark.extra_info["vs_process_pool"] = round(isolated / other, 3)
