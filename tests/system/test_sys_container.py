"""A real memory cgroup with a limit: the unguarded job is OOM-killed, the guarded one finishes.

Both runs are the same ingestion job (``tests/workloads/batch_job.py``: every item holds
``ITEM_KB`` until its batch ends) in a fresh child of this process's own memory cgroup, limited to
``LIMIT_MB``. The fixed batch needs about twice the limit at once, so the kernel kills it. The
guarded run is given no limit: it must find the cgroup's on its own (``limits.effective_limit``,
then ``memory_budget``'s default ceiling, 90% of it) while its thresholds are set far above the
limit, so only the cgroup can bind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cgroup_helpers import ChildCgroup, child_memory_cgroup, unavailable_reason
from system_figures import Figures

pytestmark = [pytest.mark.system]

LIMIT_MB = 250
ITEMS = 2000
ITEM_KB = 512
#: 1000 items of 512 KB held at once: 500 MB, twice the limit.
FIXED_BATCH = 1000
JOB = Path(__file__).resolve().parents[1] / "workloads" / "batch_job.py"
MB = 1024 * 1024


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def cgroup_counters(cg: ChildCgroup) -> dict[str, Any]:
    """What the kernel counted for the cgroup: peak usage, limit hits and OOM kills (v1 or v2).

    v1 counts page cache in the usage as well as the job's anonymous memory."""
    p = cg.path
    if cg.version == "v1":
        oom = _keyed(_read(os.path.join(p, "memory.oom_control")))
        return {
            "peak_bytes": int(_read(os.path.join(p, "memory.max_usage_in_bytes"))),
            "failcnt": int(_read(os.path.join(p, "memory.failcnt"))),
            "oom_kill": oom.get("oom_kill"),
        }
    events = _keyed(_read(os.path.join(p, "memory.events")))
    peak_file = os.path.join(p, "memory.peak")  # Linux 5.19 and later
    return {
        "peak_bytes": int(_read(peak_file)) if os.path.exists(peak_file) else None,
        "failcnt": events.get("max"),
        "oom_kill": events.get("oom_kill"),
    }


@pytest.fixture
def limited_cgroup() -> Iterator[Any]:
    """A factory of child memory cgroups of ``LIMIT_MB``; each is removed after the test, even
    on failure (the helper moves any process left back to the parent and retries rmdir)."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"SKIP container test: {reason}")
        pytest.skip(reason)
    stack: list[Any] = []

    def make() -> ChildCgroup:
        manager = child_memory_cgroup(LIMIT_MB * MB)
        try:
            cg = manager.__enter__()
        except RuntimeError as err:
            print(f"SKIP container test: {err}")
            pytest.skip(str(err))
        stack.append(manager)
        return cg

    yield make
    while stack:
        stack.pop().__exit__(None, None, None)


def _job(mode: str, env: dict[str, str]) -> list[str]:
    env_bin = shutil.which("env") or "/usr/bin/env"
    settings = [f"{k}={v}" for k, v in env.items()]
    args = [mode, "--items", str(ITEMS), "--item-kb", str(ITEM_KB), "--batch", str(FIXED_BATCH)]
    # env execs python, which is then the process the kernel kills (returncode -9).
    return [env_bin, *settings, sys.executable, str(JOB), *args]


def _report(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


@pytest.mark.slow
def test_unguarded_job_is_oom_killed_and_guarded_job_finishes(
    limited_cgroup: Any, socket_home: Path, figures: Figures
) -> None:
    # Unguarded: a fixed batch of 500 MB under a 250 MB limit.
    fixed_cg = limited_cgroup()
    fixed = fixed_cg.run(_job("fixed", {}), timeout=120)
    fixed_counts = cgroup_counters(fixed_cg)

    # Guarded, no limit given: thresholds far above the cgroup, so only the cgroup binds.
    guarded_cg = limited_cgroup()
    env = {"MEMORY_THRESHOLD_MB": "4000", "MEMORY_CRITICAL_THRESHOLD_MB": "5000"}
    guarded = guarded_cg.run(_job("guarded", env), timeout=300)
    guarded_counts = cgroup_counters(guarded_cg)
    report = _report(guarded.stdout)

    limit_mb = guarded_cg.limit_bytes / MB
    figures.record(
        "container",
        cgroup_version=guarded_cg.version,
        limit_mb=round(limit_mb, 1),
        items=ITEMS,
        item_kb=ITEM_KB,
        total_mb=round(ITEMS * ITEM_KB / 1024, 1),
        fixed_batch=FIXED_BATCH,
        unguarded_returncode=fixed.returncode,
        unguarded_oom_kill=fixed_counts["oom_kill"],
        unguarded_failcnt=fixed_counts["failcnt"],
        unguarded_cgroup_peak_mb=_mb(fixed_counts["peak_bytes"]),
        guarded_returncode=guarded.returncode,
        guarded_ceiling_mb=report.get("limit_mb"),
        guarded_processed=report.get("processed"),
        guarded_items_lost=ITEMS - int(report.get("processed") or 0),
        guarded_peak_rss_mb=_round(report.get("peak_mb")),
        guarded_cgroup_peak_mb=_mb(guarded_counts["peak_bytes"]),
        guarded_oom_kill=guarded_counts["oom_kill"],
        guarded_failcnt=guarded_counts["failcnt"],
        guarded_batches=report.get("batches"),
        guarded_max_batch=report.get("max_batch"),
        guarded_cleanups=report.get("cleanups"),
        guarded_seconds=report.get("seconds"),
    )
    print(json.dumps(figures.sections["container"], indent=1))

    # The unguarded job died by the kernel's hand (SIGKILL; 137 when a shell reports it).
    assert fixed.returncode in (-9, 137), (fixed.returncode, fixed.stdout, fixed.stderr[-2000:])
    assert _report(fixed.stdout) == {}, "the unguarded job finished: the limit did not bind"
    killed = fixed_counts["oom_kill"]
    assert (killed is not None and killed >= 1) or fixed_counts["failcnt"], fixed_counts
    # The guarded job found the limit itself, processed every item once, and stayed under it.
    assert guarded.returncode == 0, guarded.stderr[-3000:]
    assert report["processed"] == report["items"] == ITEMS and report["checksum_ok"]
    assert report["limit_mb"] == pytest.approx(0.9 * limit_mb, abs=1.0)
    assert report["peak_mb"] < limit_mb
    assert guarded_counts["oom_kill"] in (0, None), guarded_counts
    if guarded_counts["peak_bytes"] is not None:
        assert guarded_counts["peak_bytes"] < guarded_cg.limit_bytes


def _mb(value: Any) -> Any:
    return None if value is None else round(value / MB, 1)


def _round(value: Any) -> Any:
    return None if value is None else round(float(value), 1)
