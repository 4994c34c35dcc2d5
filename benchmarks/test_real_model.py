"""The real embedding model (all-MiniLM-L6-v2 on the CPU) under a budget against fixed batches.

Each run is ``tests/workloads/model_job.py`` in a fresh process: 300 stdlib passages embedded and
added to chroma (a job's learning, slow start and the pace's two batches of a slower size class, is
paid once: on 150 passages it was half the job, and the guarded job's throughput measured that more
than its sizes). For each ceiling (over the memory of the loaded model) the guarded job runs and so
do fixed batches of 8, 16 and 32 passages, unguarded, in the same test, in ``ROUNDS`` interleaved
rounds (one run of each, then again): ``throughput_vs_best_fixed`` is the guarded job's best
passages a second over the best of the fastest fixed size whose exact peak stayed under the same
ceiling (the same loaded model, one run at a time). One run of the same job varies by up to 30% on a
shared 2-core machine (fixed batches of 8: 12.9 and 17.9 passages a second in one session); the best
of each over interleaved rounds compares the jobs, not the machine's moments. ``extra_info`` also
carries the peaks, the ceiling and the batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jobs import run_job

JOB = Path(__file__).resolve().parent.parent / "tests" / "workloads" / "model_job.py"
PASSAGES = "300"
FIXED = (8, 16, 32)
ROUNDS = 3
#: The smoke pass (``--benchmark-disable`` in ``make test``) checks that the benchmark runs, not
#: what it measures (``tests/rag/test_real_model.py`` holds the model to its ceiling): 20 passages
#: and one fixed size instead of eight jobs of 300 (jobs of 150 took 160 s of the suite's time).
SMOKE_PASSAGES = "20"


def model_job(*args: str, passages: str = PASSAGES) -> dict[str, Any]:
    return run_job(JOB, *args, "--passages", passages, timeout=600)


@pytest.mark.benchmark(group="real-model")
@pytest.mark.parametrize("over_loaded_mb", [250, 600])
def test_real_model_throughput_against_the_best_fixed_batch(
    benchmark: Any, over_loaded_mb: int
) -> None:
    passages = SMOKE_PASSAGES if benchmark.disabled else PASSAGES
    guarded = benchmark.pedantic(
        model_job,
        args=("guarded", "--over-loaded-mb", str(over_loaded_mb)),
        kwargs={"passages": passages},
        rounds=1,
        iterations=1,
    )
    sizes = FIXED[:1] if benchmark.disabled else FIXED
    runs = [guarded]
    fixed_runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    for round_ in range(1 if benchmark.disabled else ROUNDS):
        if round_:
            runs.append(
                model_job("guarded", "--over-loaded-mb", str(over_loaded_mb), passages=passages)
            )
        for size in sizes:
            fixed_runs[size].append(model_job("fixed", "--batch", str(size), passages=passages))
    # Every guarded run holds: every passage stored, and the bound of tests/rag/test_real_model.py,
    # 2% of the room (a passage's cost follows its length).
    for run in runs:
        assert run["stored"] == int(passages)
        assert run["peak_mb"] <= run["limit_mb"] + 0.02 * over_loaded_mb
    guarded = max(runs, key=lambda run: run["passages_per_second"])
    # Each fixed size: its best throughput, and its highest peak over its own loaded model
    # (each run loads its own: compare over the loaded model).
    fixed = {
        size: {
            "pps": max(run["passages_per_second"] for run in done),
            "peak_over_loaded_mb": round(max(run["peak_mb"] - run["loaded_mb"] for run in done), 1),
        }
        for size, done in fixed_runs.items()
    }
    fits = {
        size: run["pps"]
        for size, run in fixed.items()
        if run["peak_over_loaded_mb"] <= over_loaded_mb
    }
    best = max(fits.items(), key=lambda kv: kv[1]) if fits else None
    benchmark.extra_info.update(
        over_loaded_mb=over_loaded_mb,
        limit_mb=guarded["limit_mb"],
        peak_mb=guarded["peak_mb"],
        batches=guarded["batches"],
        max_batch=guarded["max_batch"],
        passages_per_second=guarded["passages_per_second"],
        fixed=fixed,
        rounds=len(runs),
        best_fixed=best[0] if best else None,
        throughput_vs_best_fixed=(
            round(guarded["passages_per_second"] / best[1], 3) if best else None
        ),
    )
