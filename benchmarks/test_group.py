"""What group budgets cost and what they keep: the per-batch cost of reading the group and the
ledger, and the throughput of loops and processes that share one headroom.

- ``group-batch``: ``chunks()`` in batches of one item, so each batch pays the scope's readings:
  ``process`` (RSS and the in-process ledger) is the baseline; ``cgroup`` adds the cgroup's
  working set (two files) and the file ledger shared with the cgroup's processes; ``auto`` on a
  host without a cgroup limit adds ``MemAvailable``. ``extra_us_per_batch`` is the paired
  median's difference per batch.
- ``group-loops``: 1,600 items of 1 MB that an embedder hashes twice, all in one loop under
  ``memory_budget(300)`` (the baseline), in 16 threads or in 64 asyncio tasks each with its own
  300 MB budget (``tests/workloads/group_job.py`` in a fresh process). ``throughput_vs_one``.
- ``group-processes``: 1,200 items of 2.5 MB done by one guarded process alone in a 400 MB
  memory cgroup (the baseline), or by three guarded processes sharing it, 400 each, no limit
  given (root and a writable cgroup hierarchy; skipped elsewhere). ``time_vs_one``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from jobs import run_job
from paired import paired_medians

from zerorag_guard import memory_budget

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
ITEMS = 400


def chunk_loop(scope: str) -> int:
    done = 0
    with memory_budget(100_000, batch_size=1, scope=scope) as budget:
        for batch in budget.chunks(range(ITEMS)):
            done += len(batch)
    return done


@pytest.mark.benchmark(group="group-batch")
@pytest.mark.parametrize("scope", ["process", "cgroup", "auto"])
def test_group_batch_cost(benchmark: Any, scope: str) -> None:
    benchmark.extra_info["baseline"] = scope == "process"
    assert benchmark.pedantic(chunk_loop, args=(scope,), rounds=5, iterations=1) == ITEMS
    if scope != "process":
        pairs = 2 if benchmark.disabled else 60
        base, other = paired_medians(
            lambda: chunk_loop("process"), lambda: chunk_loop(scope), pairs
        )
        benchmark.extra_info["extra_us_per_batch"] = round((other - base) / ITEMS * 1e6, 2)


def group_job(*args: str) -> float:
    report = run_job(TESTS / "workloads" / "group_job.py", *args)
    assert report["exactly_once"]
    return float(report["seconds"])


LOOPS = {"one": ("threads", 1), "threads-16": ("threads", 16), "tasks-64": ("tasks", 64)}


def loops_job(variant: str) -> float:
    mode, loops = LOOPS[variant]
    return group_job(
        mode,
        "--loops",
        str(loops),
        "--items",
        str(1600 // loops),
        "--item-kb",
        "1024",
        "--limit-mb",
        "300",
        "--passes",
        "2",
    )


@pytest.mark.benchmark(group="group-loops")
@pytest.mark.parametrize("variant", list(LOOPS))
def test_group_loops_throughput(benchmark: Any, variant: str) -> None:
    benchmark.extra_info["baseline"] = variant == "one"
    benchmark.pedantic(loops_job, args=(variant,), rounds=1 if benchmark.disabled else 3)
    if variant != "one":
        pairs = 1 if benchmark.disabled else 5
        base, other = paired_medians(lambda: loops_job("one"), lambda: loops_job(variant), pairs)
        benchmark.extra_info["throughput_vs_one"] = round(base / other, 3)


def processes_job(cgroup: Any, processes: int) -> None:
    job = [sys.executable, str(TESTS / "workloads" / "batch_job.py"), "guarded", "--batch", "1000"]
    job += ["--items", str(1200 // processes), "--item-kb", "2560"]
    procs = [cgroup.popen(job) for _ in range(processes)]
    for proc in procs:
        proc.communicate(timeout=300)
        assert proc.returncode == 0, "a guarded process died in the shared cgroup"


@pytest.mark.benchmark(group="group-processes")
@pytest.mark.parametrize("processes", [1, 3])
def test_group_processes_time(benchmark: Any, processes: int) -> None:
    from cgroup_helpers import child_memory_cgroup, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    benchmark.extra_info["baseline"] = processes == 1
    with child_memory_cgroup(400 * 1024 * 1024) as cgroup:
        benchmark.pedantic(
            processes_job, args=(cgroup, processes), rounds=1 if benchmark.disabled else 3
        )
        if processes > 1:
            pairs = 1 if benchmark.disabled else 5
            base, other = paired_medians(
                lambda: processes_job(cgroup, 1), lambda: processes_job(cgroup, processes), pairs
            )
            benchmark.extra_info["time_vs_one"] = round(other / base, 3)
