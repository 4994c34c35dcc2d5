"""Isolated calls: real workers, real caps (a child memory cgroup; RLIMIT_DATA), real kills.

The 1,500-item jobs run in a subprocess (``workloads/isolate_job.py``), so the return code of
the process that made the calls is checked too. The rest runs here, against the functions of
``workloads/isolated.py`` (a worker finds them by module and name).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cgroup_helpers import unavailable_reason
from workloads import isolated as w

from zerorag_guard import (
    MemoryBudgetExceeded,
    WorkerCrashed,
    WorkerOutOfMemory,
    WorkerTimeout,
    memory_guarded,
)
from zerorag_guard.budget.worker_cap import WorkerCgroup

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="workers and caps: Linux")
JOB = Path(__file__).parent.parent / "workloads" / "isolate_job.py"
CGROUP = unavailable_reason()


def run_job(mode: str, cap: str, tmp_path: Path) -> tuple[dict[str, Any], collections.Counter[int]]:
    log = tmp_path / f"{mode}-{cap}.log"
    done = subprocess.run(
        [sys.executable, str(JOB), mode, cap, str(log)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=JOB.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = collections.Counter(int(line) for line in log.read_text().split())
    return json.loads(done.stdout), counts


@pytest.mark.parametrize("mode", ["calls", "chunk"])
@pytest.mark.parametrize(
    "cap",
    [
        pytest.param("auto", marks=pytest.mark.skipif(CGROUP is not None, reason=str(CGROUP))),
        "rlimit",
    ],
)
def test_oversized_items_fail_alone_and_every_other_item_is_processed_once(
    mode: str, cap: str, tmp_path: Path
) -> None:
    report, counts = run_job(mode, cap, tmp_path)
    large = [100, 777, 1400]
    assert [item for item, _, _ in report["oversized"]] == large
    expected = [i for i in range(1500) if i not in large]
    assert sorted(counts) == expected and set(counts.values()) == {1}  # each exactly once
    assert report["results"] == [2 * i for i in expected]
    for _, peak_mb, limit_mb in report["oversized"]:
        if cap == "auto":  # the kernel killed the worker at its cgroup's cap
            assert limit_mb == 150 and 140 <= peak_mb <= 151
        else:  # the allocation failed under RLIMIT_DATA before anything was touched
            assert limit_mb == 400 and peak_mb < 400
    assert report["parent_peak_mb"] < 150  # the 600 MB items never reached the caller


def test_the_worker_is_kept_between_calls_and_replaced_after_a_kill() -> None:
    first = w.pid()
    assert w.pid() == first != os.getpid()
    if CGROUP is None:
        with pytest.raises(WorkerOutOfMemory) as info:
            w.need(400)
        assert isinstance(info.value, MemoryBudgetExceeded)
        assert info.value.limit_mb == 150 and "killed by the kernel" in str(info.value)
        assert w.need(20) == 20 * 1024 * 1024
    with pytest.raises(WorkerOutOfMemory) as info:
        w.need_rlimit(1000)
    assert "RLIMIT_DATA" in str(info.value) and info.value.limit_mb == 400
    assert w.need_rlimit(20) == 20 * 1024 * 1024


def test_an_exception_comes_back_with_its_type_and_the_workers_traceback() -> None:
    with pytest.raises(KeyError) as info:
        w.fails("missing")
    assert info.value.args == ("missing",)
    assert "in fails" in str(info.value.__cause__) and "raise KeyError(text)" in str(
        info.value.__cause__
    )
    with pytest.raises(WorkerCrashed, match=r"Unpicklable: x \(not picklable\)"):
        w.fails_oddly()
    assert w.echo({"still": "served"}) == {"still": "served"}
    worker = w.pid_or_raise(False)
    with pytest.raises(FileNotFoundError, match="/nowhere"):
        w.pid_or_raise(True)
    assert w.pid_or_raise(False) == worker  # the call's own error leaves its worker serving


def test_a_hung_call_or_a_worker_dead_of_a_signal_is_a_clear_error_and_the_pool_goes_on() -> None:
    with pytest.raises(WorkerTimeout, match=r"ran past its timeout of 0\.5 s") as info:
        w.sleeps(30)
    assert isinstance(info.value, TimeoutError)
    assert w.sleeps(0) == "woke"
    for sig, name in ((signal.SIGSEGV, "SIGSEGV"), (signal.SIGTERM, "SIGTERM")):
        with pytest.raises(WorkerCrashed, match=f"died of {name}"):
            w.dies(sig)
    assert w.echo(3) == 3


def test_async_functions_run_isolated_too() -> None:
    assert asyncio.run(w.apid()) != os.getpid()


def test_what_cannot_be_isolated_is_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match="module-level function"):
        memory_guarded(isolate=True, limit_mb=100)(lambda: 1)

    def nested() -> None: ...

    with pytest.raises(TypeError, match="module-level function"):
        memory_guarded(isolate=True, limit_mb=100)(nested)

    def gen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        memory_guarded(isolate=True, limit_mb=100)(gen)
    with pytest.raises(ValueError, match="needs limit_mb="):
        memory_guarded(isolate=True)
    with pytest.raises(ValueError, match="workers= and timeout= are for isolated calls"):
        memory_guarded(workers=2)
    with pytest.raises(ValueError, match="isolate='yes' is not valid"):
        memory_guarded(isolate="yes", limit_mb=100)
    with pytest.raises(ValueError, match="workers=0 is not valid"):
        memory_guarded(isolate=True, limit_mb=100, workers=0)(w.bare_echo)


def test_a_v2_worker_cgroup_is_capped_without_swap_and_reads_its_kills(tmp_path: Path) -> None:
    """cgroup v2 through a fake tree: the files written and read are the kernel's."""
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/jobs/ingest\n")
    (proc / "self" / "mountinfo").write_text(
        "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    )
    own = sys_root / "sys" / "fs" / "cgroup" / "jobs" / "ingest"
    own.mkdir(parents=True)
    stale = own / f"zerorag-worker-{2**22 + 7}-1"  # a dead process's: removed
    stale.mkdir()
    cgroup = WorkerCgroup.create(300 * 1024 * 1024, "9", str(proc), str(sys_root))
    assert cgroup is not None and cgroup.version == "v2"
    path = Path(cgroup.path)
    assert path.parent == own and not stale.exists()
    assert (path / "memory.max").read_text() == str(300 * 1024 * 1024)
    (path / "memory.swap.max").write_text("max")  # the kernel makes it: written when present
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    (path / "memory.peak").write_text(str(300 * 1024 * 1024))
    assert cgroup.oom_kills() == 1 and cgroup.peak_bytes() == 300 * 1024 * 1024
    cgroup.add(4242)
    assert (path / "cgroup.procs").read_text() == "4242"
    for name in os.listdir(path):
        os.unlink(path / name)
    cgroup.remove()
    assert not path.exists()


def test_no_writable_hierarchy_gives_none_so_the_worker_caps_itself(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/\n")
    (proc / "self" / "mountinfo").write_text("")
    assert WorkerCgroup.create(100, "1", str(proc), str(tmp_path)) is None


def test_a_script_without_a_main_guard_gets_the_reason_not_a_hang(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent.parent)!r})\n"
        "from workloads import isolated\n"
        "print(isolated.pid())\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("zerorag_guard.errors.WorkerCrashed: starting a worker")
    assert "if __name__ == '__main__':" in last
