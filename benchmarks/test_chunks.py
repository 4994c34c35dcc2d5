"""Throughput of memory_budget().chunks() against fixed batches, under a generous budget.

The job embeds 5,000 texts in batches; the fixed run uses batches of 100, the adaptive run
starts small (slow start) and grows to 100. The report shows the adaptive run's throughput as
a share of the fixed one (the issue asks for at least 90%), from 80 pairs of runs back to back
(``throughput_vs_fixed``).
"""

from __future__ import annotations

from typing import Any

import pytest
from paired import paired_ratio
from workloads import embed_batch

from zerorag_guard import memory_budget

TEXTS = [f"document {i} about memory budgets and batch ingestion {i % 13}" for i in range(5000)]


def fixed_batches() -> int:
    done = 0
    for i in range(0, len(TEXTS), 100):
        done += len(embed_batch(TEXTS[i : i + 100]))
    return done


def adaptive_batches() -> int:
    done = 0
    with memory_budget(100_000, batch_size=100) as budget:
        for batch in budget.chunks(TEXTS):
            done += len(embed_batch(batch))
    return done


@pytest.mark.benchmark(group="chunks-throughput")
@pytest.mark.parametrize("variant", ["fixed", "adaptive"])
def test_chunks_throughput(benchmark: Any, variant: str) -> None:
    func = fixed_batches if variant == "fixed" else adaptive_batches
    benchmark.extra_info["baseline"] = variant == "fixed"
    assert benchmark.pedantic(func, rounds=5, iterations=1, warmup_rounds=1) == len(TEXTS)
    if variant == "adaptive":
        ratio = paired_ratio(fixed_batches, adaptive_batches, benchmark.disabled, pairs=80)
        benchmark.extra_info["paired_ratio"] = round(ratio, 4)
        benchmark.extra_info["throughput_vs_fixed"] = round(1 / ratio, 3)
