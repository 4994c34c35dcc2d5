"""Budget adherence of memory_budget().chunks() against fixed batch sizes, in fresh processes.

Each run is ``tests/workloads/batch_job.py`` in a subprocess of its own (so peaks are the
process's own kernel high-water mark, not this session's): 1,000 items of 200 KB that live until
their batch ends. ``fixed-500`` is a fixed batch of 500 (about 100 MB per batch), ``fixed-100``
the small fixed batch one would pick to be safe, ``adaptive`` starts at 500 under a budget of the
process's start plus 40 MB and lets chunks() size the batches. ``extra_info`` carries the peak,
its rise over the start, the budget and the batches; the time is the whole job, start-up included
(``benchmarks/test_chunks.py`` measures throughput in-process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jobs import run_job

JOB = Path(__file__).resolve().parent.parent / "tests" / "workloads" / "batch_job.py"
COMMON = ["--items", "1000", "--item-kb", "200"]
BUDGET_OVER_START_MB = 40.0
VARIANTS = {
    "fixed-500": ["fixed", "--batch", "500"],
    "fixed-100": ["fixed", "--batch", "100"],
    "adaptive": ["guarded", "--batch", "500", "--budget-over-base-mb", str(BUDGET_OVER_START_MB)],
}


def adherence_job(args: list[str]) -> dict[str, Any]:
    return run_job(JOB, *args, *COMMON, timeout=120)


@pytest.mark.benchmark(group="budget-adherence")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_budget_adherence(benchmark: Any, variant: str) -> None:
    result = benchmark.pedantic(adherence_job, args=(VARIANTS[variant],), rounds=3, iterations=1)
    assert result["items"] == 1000 and result["checksum_ok"]
    rise = result["peak_mb"] - result["base_mb"]
    extra = {
        "baseline": variant == "fixed-500",
        "job_peak_mb": round(result["peak_mb"], 1),
        "job_peak_over_start_mb": round(rise, 1),
    }
    if variant == "adaptive":
        extra.update(
            budget_mb=round(result["limit_mb"], 1),
            budget_over_start_mb=BUDGET_OVER_START_MB,
            within_budget=result["peak_mb"] <= result["limit_mb"],
            batches=result["batches"],
            max_batch=result["max_batch"],
        )
        # The whole point of the budget: the peak stays under it.
        assert result["peak_mb"] <= result["limit_mb"]
    benchmark.extra_info.update(extra)
