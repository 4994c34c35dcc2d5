"""LlamaIndex: the guarded pipeline's memory does not follow the corpus, and it keeps the bare
pipeline's throughput.

Each run is ``tests/workloads/llamaindex_job.py`` in a fresh process: stdlib files split into
nodes of 256 tokens, embedded by the project's hashing embedding (384 numbers) and stored in a
persistent chroma collection.

- ``memory``: ``guard_pipeline(pipeline).run(documents, return_nodes=False)`` (no ceiling: the
  chunks of ``BATCH_SIZE`` documents alone bound memory) over ``FILES`` files and over 4x as
  many. ``peak_4x_vs_1x`` is the process's exact peak over the larger corpus over that over the
  smaller (the process's peak is what an OOM killer sees); ``extra_info`` also has the peaks
  over where each run started.
- ``throughput``: the bare ``pipeline.run(documents=[...])`` and the guarded run on ``FILES``
  files (a corpus the bare run can take: under chroma's maximum for one write), in ``ROUNDS``
  interleaved rounds; ``throughput_vs_bare`` is the guarded run's best nodes a second over the
  bare run's best.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jobs import run_job

pytest.importorskip("llama_index.core")
pytest.importorskip("llama_index.vector_stores.chroma")

JOB = Path(__file__).resolve().parent.parent / "tests" / "workloads" / "llamaindex_job.py"
#: Files whose nodes one chroma write takes (4,957 nodes for the first 60 stdlib files).
FILES = 60
ROUNDS = 3
#: The smoke pass (``--benchmark-disable`` in ``make test``) checks that the benchmark runs.
SMOKE_FILES = 4


def run_pipeline(directory: Path, mode: str, files: int, *args: str) -> dict[str, Any]:
    directory.mkdir(parents=True)
    return run_job(JOB, str(directory), mode, "--files", str(files), *args, timeout=900)


#: Chunks of at most 16 documents, so that the 1x corpus too spends most of its run at the
#: chunk size the 4x one holds (60 files are chunks of 1, 2, 4, 8, 16, 16, 13).
CHUNK = ("--batch-size", "16")


@pytest.mark.benchmark(group="llamaindex")
def test_memory_does_not_follow_the_corpus(benchmark: Any, tmp_path: Path) -> None:
    # With LlamaIndex's cache off: its default cache is a dict in this process that keeps
    # every node it made (text and embedding), so with it memory follows the corpus whatever
    # the chunks (measured here too, as `cached_peak_4x_vs_1x`).
    files = SMOKE_FILES if benchmark.disabled else FILES
    small = run_pipeline(tmp_path / "1x", "guarded", files, *CHUNK, "--no-cache")
    large = benchmark.pedantic(
        run_pipeline,
        args=(tmp_path / "4x", "guarded", 4 * files, *CHUNK, "--no-cache"),
        rounds=1,
        iterations=1,
    )
    # The first 60 files are the larger ones: 4x the files held 2.5x the nodes (8,700 / 3,542).
    assert large["stored"] > 2 * small["stored"] > 0
    cached = [
        run_pipeline(tmp_path / f"cached-{n}", "guarded", n, *CHUNK) for n in (files, 4 * files)
    ]
    benchmark.extra_info.update(
        files=[files, 4 * files],
        nodes=[small["stored"], large["stored"]],
        peak_mb=[small["peak_mb"], large["peak_mb"]],
        peak_over_start_mb=[round(run["peak_mb"] - run["start_mb"], 1) for run in (small, large)],
        max_batch=[max(small["batches"]), max(large["batches"])],
        peak_4x_vs_1x=round(large["peak_mb"] / small["peak_mb"], 3),
        cached_peak_mb=[run["peak_mb"] for run in cached],
        cached_peak_4x_vs_1x=round(cached[1]["peak_mb"] / cached[0]["peak_mb"], 3),
    )


@pytest.mark.benchmark(group="llamaindex")
def test_throughput_against_the_bare_pipeline(benchmark: Any, tmp_path: Path) -> None:
    files = SMOKE_FILES if benchmark.disabled else FILES
    rounds = 1 if benchmark.disabled else ROUNDS
    bare, guarded = [], []
    for i in range(rounds):
        bare.append(run_pipeline(tmp_path / f"bare-{i}", "bare", files))
        if i == 0:
            guarded.append(
                benchmark.pedantic(
                    run_pipeline,
                    args=(tmp_path / "guarded-0", "guarded", files),
                    rounds=1,
                    iterations=1,
                )
            )
        else:
            guarded.append(run_pipeline(tmp_path / f"guarded-{i}", "guarded", files))
    assert {run["stored"] for run in bare + guarded} == {bare[0]["stored"]}
    best_bare = max(run["nodes_per_second"] for run in bare)
    best_guarded = max(run["nodes_per_second"] for run in guarded)
    benchmark.extra_info.update(
        files=files,
        nodes=bare[0]["stored"],
        rounds=rounds,
        nodes_per_second={"bare": best_bare, "guarded": best_guarded},
        peak_over_start_mb={
            "bare": max(round(r["peak_mb"] - r["start_mb"], 1) for r in bare),
            "guarded": max(round(r["peak_mb"] - r["start_mb"], 1) for r in guarded),
        },
        throughput_vs_bare=round(best_guarded / best_bare, 3),
    )
