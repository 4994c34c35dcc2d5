"""``zerorag-guard demo``: the stdlib corpus, and real runs of the command in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from zerorag_guard.rag import demo

pytest.importorskip("chromadb")


def _demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zerorag_guard", "demo", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        check=False,
    )


def test_corpus_is_the_stdlib_without_tests_top_level_first() -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = demo.stdlib_files()
    parts = [f.relative_to(root).parts for f in files]
    assert len(files) > 300 and all(f.suffix == ".py" for f in files)
    folders = {d for p in parts for d in p[:-1]}
    assert not folders & {"test", "tests", "idle_test", "site-packages"}
    assert not any(d.startswith("test") for d in folders)
    depths = [len(p) for p in parts]
    assert depths == sorted(depths)  # top-level modules first
    assert root / "heapq.py" in demo.stdlib_files(limit=200)
    assert demo.module_name(root / "json" / "__init__.py", root) == "json"
    assert demo.module_name(root / "json" / "decoder.py", root) == "json.decoder"


def test_passages_cover_the_text_in_order_and_stay_near_the_size() -> None:
    text = (Path(sysconfig.get_paths()["stdlib"]) / "heapq.py").read_text()
    passages = demo.split_passages(text, size=1000)
    assert len(passages) > 5 and max(len(p) for p in passages) <= 2 * 1000 + 200
    assert "".join("".join(p.split()) for p in passages) == "".join(text.split())
    assert passages[0].startswith('"""Heap queue algorithm')


def test_a_budget_below_what_the_process_needs_is_a_one_line_error(tmp_path: Path) -> None:
    # The command's process alone holds more than 60 MB (Python, chroma, numpy): no batch fits.
    done = _demo("--budget-mb", "60", "--limit", "5", "--no-plot", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("zerorag-guard demo: error: memory budget exceeded")
    assert "limit 60.0 MB" in line and "0 items processed, resume from there" in line


def test_sample_query_is_the_opening_of_heapqs_docstring() -> None:
    query = demo.sample_query()
    assert query.startswith("Heap queue algorithm (a.k.a. priority queue).")
    assert 200 <= len(query) < 600


def test_demo_ingests_stays_under_budget_finds_heapq_and_plots(tmp_path: Path) -> None:
    done = _demo("--limit", "200", "--out", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "documents" in out and "200" in out
    assert "(under the budget of 280 MB)" in out
    assert "expects a passage of module heapq: found" in out
    assert "health score" in out
    assert (tmp_path / "demo-timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "store-chroma" / "chroma.sqlite3").exists()


@pytest.mark.parametrize("store", ["chroma", "faiss"])
def test_demo_json_figures(store: str, tmp_path: Path) -> None:
    done = _demo("--limit", "120", "--store", store, "--out", str(tmp_path), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["documents"] == 120
    assert result["passages"] == result["stored"] > result["documents"]
    assert result["peak_mb"] <= result["budget_mb"] == demo.DEFAULT_BUDGET_MB
    assert result["batches"] > 5 and result["batch_size_min"] == 1
    assert sum(1 for _ in result["timeline"]) >= result["batches"]
    search = result["search"]
    assert search["found"] and search["hits"][0]["module"] == "heapq"
    assert search["hits"][0]["id"].startswith("heapq:")
    assert {"health_score", "memory_usage", "health_issues"} <= set(result["health"])
    assert result["health"]["store"]["items"] == result["passages"]


@pytest.mark.slow
def test_compare_fixed_batches_go_over_the_budget_the_guarded_run_keeps(tmp_path: Path) -> None:
    # The whole stdlib at the default budget (280 MB). Measured here: guarded 240-253 MB; fixed
    # batches of 5,000 passages 296-314 MB on a quiet machine but 267 MB once under load, so
    # "fixed goes over" is the workload's, not the guard's, and is not asserted; the guard's
    # promise is: under its budget, and below the unguarded run.
    done = _demo("--compare", "--out", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [
        line for line in done.stdout.splitlines() if "guarded " in line or "fixed batch" in line
    ]
    guarded = next(r for r in rows if "guarded " in r and ("under" in r or "OVER" in r))
    fixed = next(r for r in rows if "fixed batch 5000" in r)
    assert "under" in guarded and "OVER" not in guarded
    peaks = [float(row.split("│")[3]) for row in (guarded, fixed)]
    print(f"\npeaks: guarded {peaks[0]:.1f} MB, fixed {peaks[1]:.1f} MB, budget 280 MB")
    assert peaks[0] < peaks[1]
