"""Group readings: a cgroup's working set (fake v1 and v2 trees, and the real own cgroup), a
process tree's PSS (fake /proc, and a real forked child), MemAvailable and PSI lines."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from fake_trees import v1_tree, v2_tree

from zerorag_guard.memory import cgroups, group
from zerorag_guard.memory.cgroups import Cgroup

MB = 1024 * 1024
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


# -- the cgroup's working set ----------------------------------------------------------------------
def test_v1_working_set_is_usage_less_hierarchical_inactive_file(tmp_path: Path) -> None:
    tree = v1_tree(tmp_path, "/job/worker")
    own = "/sys/fs/cgroup/memory/job/worker"
    tree.file(f"{own}/memory.usage_in_bytes", str(500 * MB))
    # inactive_file is this cgroup's alone; total_inactive_file takes in its children too.
    tree.file(f"{own}/memory.stat", f"inactive_file {10 * MB}\ntotal_inactive_file {120 * MB}")
    tree.file("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", str(600 * MB))
    cgroup = cgroups.own_cgroup(str(tree.proc), str(tree.sys))
    assert cgroup == Cgroup("v1", str(tree.sys) + own)
    assert cgroups.cgroup_working_set(cgroup) == 380 * MB
    assert group.cgroup_limit(cgroup, str(tree.proc), str(tree.sys)) == 600 * MB  # the parent's


def test_v2_working_set_is_current_less_inactive_file(tmp_path: Path) -> None:
    tree = v2_tree(tmp_path, "/kubepods/pod1")
    own = "/sys/fs/cgroup/kubepods/pod1"
    tree.file(f"{own}/memory.current", str(700 * MB))
    tree.file(f"{own}/memory.stat", f"anon {400 * MB}\nfile {300 * MB}\ninactive_file {250 * MB}")
    tree.file(f"{own}/memory.max", "max")
    tree.file("/sys/fs/cgroup/kubepods/memory.max", str(2048 * MB))
    cgroup = cgroups.own_cgroup(str(tree.proc), str(tree.sys))
    assert cgroup is not None and cgroup.version == "v2"
    assert cgroups.cgroup_working_set(cgroup) == 450 * MB
    assert group.cgroup_limit(cgroup, str(tree.proc), str(tree.sys)) == 2048 * MB


def test_missing_or_unreadable_files_read_as_none_or_the_whole_usage(tmp_path: Path) -> None:
    cgroup = Cgroup("v2", str(tmp_path))
    assert cgroups.cgroup_working_set(cgroup) is None  # no memory.current
    (tmp_path / "memory.current").write_text("garbage\n")
    assert cgroups.cgroup_working_set(cgroup) is None
    (tmp_path / "memory.current").write_text(f"{300 * MB}\n")
    assert cgroups.cgroup_working_set(cgroup) == 300 * MB  # no memory.stat: all of it counts
    (tmp_path / "memory.stat").write_text("inactive_file lots\n")
    assert cgroups.cgroup_working_set(cgroup) == 300 * MB
    (tmp_path / "memory.stat").write_text(f"inactive_file {400 * MB}\n")
    assert cgroups.cgroup_working_set(cgroup) == 0  # never below zero
    assert group.cgroup_limit(cgroup, str(tmp_path / "no-proc"), str(tmp_path)) is None


def test_a_batchs_working_set_reads_the_page_cache_again_only_when_it_matters(
    tmp_path: Path,
) -> None:
    usage, stat = tmp_path / "memory.current", tmp_path / "memory.stat"
    now = [0.0]
    ws = cgroups.WorkingSet(Cgroup("v2", str(tmp_path)), clock=lambda: now[0])

    def reading(usage_mb: int, inactive_mb: int, ceiling_mb: int = 900) -> tuple[float, int]:
        usage.write_text(f"{usage_mb * MB}\n")
        stat.write_text(f"anon 1\ninactive_file {inactive_mb * MB}\n")
        value = ws.read(ceiling_mb * MB)
        assert value is not None
        return value / MB, ws.stat_reads

    assert reading(500, 300) == (200, 1)  # the first reading reads the cache
    # Usage grew by 100 MB within the interval: all of it counts, though 40 MB was new cache.
    assert reading(600, 340) == (300, 1)
    # Usage fell: pages left the cgroup (here 100 MB of cache reclaimed), read again at once.
    assert reading(500, 240) == (260, 2)
    now[0] += cgroups.INACTIVE_FILE_SECONDS  # stale
    assert reading(520, 200) == (320, 3)
    # Usage reached the ceiling: what headroom is left is cache, so it is read every time.
    assert reading(900, 600) == (300, 4)
    assert reading(950, 500, ceiling_mb=900) == (450, 5)
    assert reading(960, 500, ceiling_mb=2000) == (460, 5)  # far from a ceiling: kept
    assert ws.read() == 460 * MB and ws.stat_reads == 5  # no ceiling given: kept too
    usage.unlink()
    assert ws.read(900 * MB) is None


def test_no_memory_cgroup_mounted(tmp_path: Path) -> None:
    tree = v1_tree(tmp_path, "/job")  # the mount is named, but its directory does not exist
    assert cgroups.own_cgroup(str(tree.proc), str(tree.sys)) is None


PAGE_CACHE_JOB = """
import json, os, sys
from zerorag_guard.memory import cgroups

MB = 1 << 20
cgroup = cgroups.own_cgroup()
name = "memory.usage_in_bytes" if cgroup.version == "v1" else "memory.current"
stat_name = "total_inactive_file" if cgroup.version == "v1" else "inactive_file"

def usage_now():
    with open(os.path.join(cgroup.path, name)) as f:
        return int(f.read())

ws_before, usage_before = cgroups.cgroup_working_set(cgroup), usage_now()
# 64 MB written and read back, one MB at a time: page cache only, new and so inactive.
with open(sys.argv[1], "wb") as f:
    for _ in range(64):
        f.write(os.urandom(MB))
with open(sys.argv[1], "rb") as f:
    while f.read(MB):
        pass
working, usage = cgroups.cgroup_working_set(cgroup), usage_now()
with open(os.path.join(cgroup.path, "memory.stat")) as f:
    inactive = int(dict(line.split() for line in f)[stat_name])
print(json.dumps({"path": cgroup.path, "ws_before": ws_before, "usage_before": usage_before,
                  "working": working, "usage": usage, "inactive": inactive}))
"""


@linux_only
def test_the_real_cgroup_working_set_leaves_out_page_cache(tmp_path: Path) -> None:
    # In a child cgroup of its own: in the process's own cgroup, every other process here
    # moves the usage in between (once, in a full make test, usage rose 42.3 MB for 64 MB).
    from cgroup_helpers import child_memory_cgroup, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with child_memory_cgroup(1024 * MB) as cg:
        done = cg.run([sys.executable, "-c", PAGE_CACHE_JOB, str(tmp_path / "cache")])
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    print(r)
    assert r["path"] == cg.path
    # The kernel charged the 64 MB of cache to the cgroup...
    assert r["usage"] - r["usage_before"] >= 60 * MB
    # ... and the working set leaves it out.
    assert r["working"] - r["ws_before"] < 8 * MB
    assert 0 < r["working"] <= r["usage"]
    # Read a moment apart, so compare with slack: the two readings are two system calls apart.
    assert abs((r["usage"] - r["inactive"]) - r["working"]) < 4 * MB


# -- the process tree -----------------------------------------------------------------------------
def fake_proc(tmp_path: Path, tree: dict[int, list[int]], pss_kb: dict[int, int]) -> str:
    for pid, kids in tree.items():
        task = tmp_path / str(pid) / "task" / str(pid)
        task.mkdir(parents=True)
        (task / "children").write_text(" ".join(map(str, kids)) + (" " if kids else ""))
        if pid in pss_kb:
            (tmp_path / str(pid) / "smaps_rollup").write_text(
                f"55ea5-7fff ---p 00000000 00:00 0   [rollup]\nRss:  {2 * pss_kb[pid]} kB\n"
                f"Pss:  {pss_kb[pid]} kB\nPss_Anon:  1 kB\n"
            )
    return str(tmp_path)


def test_tree_sums_pss_of_every_descendant(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {10: [11, 12], 11: [13], 12: [], 13: []},
        {10: 100 * 1024, 11: 50 * 1024, 12: 25 * 1024, 13: 5 * 1024},
    )
    assert group.tree_pids(10, proc) == [10, 11, 12, 13]
    assert group.tree_bytes(10, proc) == 180 * MB
    assert group.tree_bytes(11, proc) == 55 * MB


def test_a_child_gone_before_its_reading_counts_zero(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: [11, 12], 11: [], 12: []}, {10: 1024, 12: 2048})
    assert group.tree_bytes(10, proc) == 3 * MB


def test_without_children_files_the_tree_comes_from_every_stat(tmp_path: Path) -> None:
    for pid, ppid in [(10, 1), (11, 10), (12, 11), (20, 1)]:
        (tmp_path / str(pid) / "task" / str(pid)).mkdir(parents=True)
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (a) b) c) S {ppid} 1 1 0\n")
    (tmp_path / "self").mkdir()
    assert group.tree_pids(10, str(tmp_path)) == [10, 11, 12]


@linux_only
def test_a_real_forked_child_sharing_its_pages_counts_them_once() -> None:
    block = bytearray(os.urandom(MB) * 96)  # 96 MB, resident before the fork
    before = group.tree_bytes(os.getpid())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child touches nothing of the block, so every page stays shared
        os.close(read)
        os.write(write, b"x")
        time.sleep(30)
        os._exit(0)
    try:
        os.close(write)
        assert os.read(read, 1) == b"x"
        os.close(read)
        pids = group.tree_pids(os.getpid())
        after = group.tree_bytes(os.getpid())
        rss_sum = sum(int(Path(f"/proc/{p}/statm").read_text().split()[1]) * 4096 for p in pids)
        print(f"tree {pids}: PSS {before / MB:.1f} -> {after / MB:.1f} MB; RSS {rss_sum / MB:.1f}")
        assert pid in pids
        # Counted twice, the child would add its 96 MB; by PSS it adds far less than the block.
        assert after - before < 40 * MB
        assert rss_sum - after > 80 * MB
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    del block


# -- host and pressure ----------------------------------------------------------------------------
def test_mem_available_and_pressure_lines(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text(
        "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n"
    )
    assert group.host_available(str(tmp_path)) == 2 * MB
    (tmp_path / "meminfo").write_text("MemTotal: 1 kB\n")  # kernels before 3.14
    assert group.host_available(str(tmp_path)) is None
    psi = tmp_path / "pressure"
    psi.write_text(
        "some avg10=27.50 avg60=3.10 avg300=0.60 total=123\n"
        "full avg10=9.00 avg60=1.00 avg300=0.20 total=45\n"
    )
    assert group.pressure_avg10(str(psi)) == 27.5
    psi.write_text("full avg10=9.00 avg60=1.00 avg300=0.20 total=45\n")
    assert group.pressure_avg10(str(psi)) is None
    psi.write_text("some avg10=x\n")
    assert group.pressure_avg10(str(psi)) is None
    assert group.pressure_avg10(str(tmp_path / "none")) is None


def test_a_batchs_mem_available_takes_off_its_own_growth_between_readings() -> None:
    now, kernel = [0.0], [4000 * MB]
    available = group.HostAvailable(lambda: kernel[0], clock=lambda: now[0])
    assert (available.read(own=100 * MB), available.reads) == (4000 * MB, 1)
    kernel[0] = 3000 * MB  # the kernel's figure moved; this process grew by 300 MB of it
    assert (available.read(own=400 * MB), available.reads) == (3700 * MB, 1)
    assert available.read(own=50 * MB) == 4000 * MB  # shrinking gives nothing back
    now[0] += group.AVAILABLE_SECONDS
    assert (available.read(own=400 * MB), available.reads) == (3000 * MB, 2)
    # Under AVAILABLE_TIGHT it is read every time, however recent the last reading.
    kernel[0] = 600 * MB
    assert (available.read(own=3200 * MB), available.reads) == (600 * MB, 3)  # est. 200 MB
    kernel[0] = 300 * MB
    assert (available.read(own=3200 * MB), available.reads) == (600 * MB, 3)  # est. 600 MB
    assert (available.read(own=3300 * MB), available.reads) == (300 * MB, 4)  # est. 500 MB
    assert (available.read(own=3300 * MB), available.reads) == (300 * MB, 5)
    kernel[0] = None  # type: ignore[assignment]  # a kernel without MemAvailable
    assert available.read(own=0) is None and available.read(own=0) is None


def test_pressure_file_is_the_v2_cgroups_own_else_the_systems(tmp_path: Path) -> None:
    (tmp_path / "memory.pressure").write_text("some avg10=1.00 avg60=0 avg300=0 total=1\n")
    assert group.pressure_file(Cgroup("v2", str(tmp_path)), "/p") == str(
        tmp_path / "memory.pressure"
    )
    assert group.pressure_file(Cgroup("v1", str(tmp_path)), "/p") == "/p/pressure/memory"
    assert group.pressure_file(None, "/p") == "/p/pressure/memory"


# -- the sampled window ---------------------------------------------------------------------------
def test_a_sampled_window_sees_a_peak_between_its_ends() -> None:
    readings = iter([100, 100, 900, 100] + [100] * 10_000)
    seen: list[int] = []

    def read() -> int:
        value = next(readings)
        seen.append(value)
        return value

    window = group.SampledWindow(read, start=100, interval=0.001)
    while len(seen) < 4:
        time.sleep(0.001)
    assert window.close() == 900
    count = len(seen)
    time.sleep(0.01)
    assert len(seen) == count  # the thread ended with the window


# -- the cgroup's peak over a loop ----------------------------------------------------------------
def test_v2_memory_peak_is_reset_for_this_descriptor_and_read_through_it(tmp_path: Path) -> None:
    peak_file = tmp_path / "memory.peak"
    peak_file.write_text(f"{900 * MB}\n")  # the cgroup's peak since its creation
    peak = cgroups.GroupPeak(Cgroup("v2", str(tmp_path)))
    assert peak.source == "memory.peak"
    assert peak_file.read_text().startswith("reset")  # written through the loop's descriptor
    peak.note(50 * MB)  # a sample never overrides the kernel's own mark
    # What the kernel would then show through that descriptor: the peak since the reset.
    peak_file.write_text(f"{300 * MB}\n")
    assert (peak.close(), peak.source) == (300 * MB, "memory.peak")


def test_where_memory_peak_cannot_be_reset_the_peak_is_sampled(tmp_path: Path) -> None:
    (tmp_path / "memory.peak").mkdir()  # cannot be opened for writing, as on Linux < 6.12
    older = cgroups.GroupPeak(Cgroup("v2", str(tmp_path)))
    missing = cgroups.GroupPeak(Cgroup("v2", str(tmp_path / "none")))
    for peak in (older, missing):
        for reading in (100 * MB, None, 250 * MB, 200 * MB):
            peak.note(reading)
        assert (peak.close(), peak.source) == (250 * MB, "sampled")
    assert cgroups.GroupPeak(Cgroup("v2", str(tmp_path / "none"))).close() is None


def test_v1s_shared_max_usage_is_never_written(tmp_path: Path) -> None:
    counter = tmp_path / "memory.max_usage_in_bytes"
    counter.write_text(f"{900 * MB}\n")
    before = counter.stat()
    peak = cgroups.GroupPeak(Cgroup("v1", str(tmp_path)))
    peak.note(120 * MB)
    assert (peak.close(), peak.source) == (120 * MB, "sampled")
    after = counter.stat()
    assert (counter.read_text(), after.st_mtime_ns) == (f"{900 * MB}\n", before.st_mtime_ns)
