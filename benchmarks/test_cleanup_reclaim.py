"""Memory given back by aggressive cleanup against ``gc.collect()`` alone, on the same fragmented
heap of cyclic garbage, each in a fresh process (``benchmarks/fragmented_heap.py``).

The time is the whole subprocess (building the heap dominates); what matters is in
``extra_info``: the heap's RSS before the cleanup, after it, the MB reclaimed and the cleanup's
own seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jobs import run_job

SCRIPT = Path(__file__).resolve().parent / "fragmented_heap.py"


def run_heap(strategy: str) -> dict[str, Any]:
    return run_job(SCRIPT, strategy, timeout=120)


@pytest.mark.benchmark(group="cleanup-reclaim")
@pytest.mark.parametrize("strategy", ["gc", "aggressive"])
def test_cleanup_reclaim(benchmark: Any, strategy: str) -> None:
    result = benchmark.pedantic(run_heap, args=(strategy,), rounds=2, iterations=1)
    assert result["strategy"] == strategy and result["heap_mb"] > 100
    benchmark.extra_info.update(
        baseline=strategy == "gc",
        heap_mb=result["heap_mb"],
        after_mb=result["after_mb"],
        reclaimed_mb=result["reclaimed_mb"],
        cleanup_seconds=result["cleanup_seconds"],
    )
