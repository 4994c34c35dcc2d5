"""The effective limit: host RAM, the process's own cgroup (v1 and v2, fake trees and a real
one) and rlimits."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Optional

import cgroup_helpers
import pytest
from fake_trees import HOST, MB, FakeTree, no_rlimits, v1_tree, v2_tree

from zerorag_guard.memory.limits import cgroup_limits, cgroup_usage_bytes, effective_limit, rlimits

V1_SENTINEL = "9223372036854771712"


# -- cgroup v1 -------------------------------------------------------------------------------------
def test_v1_own_cgroup_limit_binds(tmp_path: Path) -> None:
    tree = v1_tree(tmp_path, "/batch/job-7")
    tree.file("/sys/fs/cgroup/memory/memory.limit_in_bytes", V1_SENTINEL)
    tree.file("/sys/fs/cgroup/memory/batch/memory.limit_in_bytes", V1_SENTINEL)
    tree.file("/sys/fs/cgroup/memory/batch/job-7/memory.limit_in_bytes", str(512 * MB))
    limit = tree.limit()
    assert (limit.bytes, limit.source) == (512 * MB, "cgroup v1")
    assert limit.detail.endswith("/sys/fs/cgroup/memory/batch/job-7/memory.limit_in_bytes")
    assert [c.source for c in limit.candidates] == ["host", "cgroup v1"]


def test_v1_sentinel_means_unlimited(tmp_path: Path) -> None:
    tree = v1_tree(tmp_path, "/batch/job-7")
    tree.file("/sys/fs/cgroup/memory/memory.limit_in_bytes", V1_SENTINEL)
    tree.file("/sys/fs/cgroup/memory/batch/job-7/memory.limit_in_bytes", V1_SENTINEL)
    limit = tree.limit()
    assert (limit.bytes, limit.source) == (HOST, "host")
    assert len(limit.candidates) == 1


def test_v1_parent_limit_lower_than_the_child_binds(tmp_path: Path) -> None:
    tree = v1_tree(tmp_path, "/batch/job-7")
    tree.file("/sys/fs/cgroup/memory/batch/memory.limit_in_bytes", str(256 * MB))
    tree.file("/sys/fs/cgroup/memory/batch/job-7/memory.limit_in_bytes", str(1024 * MB))
    limit = tree.limit()
    assert limit.bytes == 256 * MB
    assert limit.detail.endswith("/memory/batch/memory.limit_in_bytes")
    assert sorted(c.bytes for c in limit.candidates) == [256 * MB, 1024 * MB, HOST]


def test_v1_sibling_limits_are_not_ours(tmp_path: Path) -> None:
    tree = v1_tree(tmp_path, "/batch/job-7")
    tree.file("/sys/fs/cgroup/memory/batch/job-8/memory.limit_in_bytes", str(64 * MB))
    tree.file("/sys/fs/cgroup/memory/batch/job-7/memory.limit_in_bytes", V1_SENTINEL)
    assert tree.limit().bytes == HOST


def test_v1_container_mount_root_is_stripped(tmp_path: Path) -> None:
    # Inside a container, /proc/self/cgroup shows the host path and the mount's root is that
    # same path: the limit file sits at the mount point itself.
    own = "/docker/0123abcd"
    tree = v1_tree(tmp_path, own, root=own)
    tree.file("/sys/fs/cgroup/memory/memory.limit_in_bytes", str(300 * MB))
    limit = tree.limit()
    assert (limit.bytes, limit.source) == (300 * MB, "cgroup v1")
    assert limit.detail.endswith("/sys/fs/cgroup/memory/memory.limit_in_bytes")


def test_v1_container_with_nested_cgroup(tmp_path: Path) -> None:
    root = "/kubepods/pod-1"
    tree = v1_tree(tmp_path, root + "/worker", root=root)
    tree.file("/sys/fs/cgroup/memory/memory.limit_in_bytes", str(700 * MB))
    tree.file("/sys/fs/cgroup/memory/worker/memory.limit_in_bytes", str(900 * MB))
    assert tree.limit().bytes == 700 * MB


def test_v1_usage(tmp_path: Path) -> None:
    tree = v1_tree(tmp_path, "/job")
    tree.file("/sys/fs/cgroup/memory/job/memory.usage_in_bytes", str(123 * MB))
    assert cgroup_usage_bytes(str(tree.proc), str(tree.sys)) == 123 * MB


# -- cgroup v2 -------------------------------------------------------------------------------------
def test_v2_memory_max_binds(tmp_path: Path) -> None:
    tree = v2_tree(tmp_path, "/system.slice/job.service")
    tree.file("/sys/fs/cgroup/system.slice/job.service/memory.max", str(2048 * MB))
    tree.file("/sys/fs/cgroup/system.slice/job.service/memory.high", "max")
    limit = tree.limit()
    assert (limit.bytes, limit.source) == (2048 * MB, "cgroup v2")
    assert limit.detail.endswith("job.service/memory.max")


def test_v2_max_means_unlimited(tmp_path: Path) -> None:
    tree = v2_tree(tmp_path, "/system.slice/job.service")
    tree.file("/sys/fs/cgroup/system.slice/job.service/memory.max", "max")
    tree.file("/sys/fs/cgroup/system.slice/job.service/memory.high", "max")
    tree.file("/sys/fs/cgroup/system.slice/memory.max", "max")
    assert tree.limit().source == "host"


def test_v2_memory_high_counts_when_lower(tmp_path: Path) -> None:
    tree = v2_tree(tmp_path, "/job")
    tree.file("/sys/fs/cgroup/job/memory.max", str(1024 * MB))
    tree.file("/sys/fs/cgroup/job/memory.high", str(800 * MB))
    limit = tree.limit()
    assert limit.bytes == 800 * MB
    assert limit.detail.endswith("memory.high")


def test_v2_nested_parent_binds(tmp_path: Path) -> None:
    tree = v2_tree(tmp_path, "/user.slice/user-0.slice/session-1.scope")
    tree.file("/sys/fs/cgroup/user.slice/memory.max", str(600 * MB))
    tree.file("/sys/fs/cgroup/user.slice/user-0.slice/memory.max", "max")
    tree.file("/sys/fs/cgroup/user.slice/user-0.slice/session-1.scope/memory.max", str(4096 * MB))
    limit = tree.limit()
    assert limit.bytes == 600 * MB
    assert limit.detail.endswith("/sys/fs/cgroup/user.slice/memory.max")


def test_v2_container_namespace_root(tmp_path: Path) -> None:
    # With a cgroup namespace the process sees "0::/" and the mount root is "/": read the mount.
    tree = v2_tree(tmp_path, "/")
    tree.file("/sys/fs/cgroup/memory.max", str(256 * MB))
    assert tree.limit().bytes == 256 * MB


def test_v2_container_mount_root_is_stripped(tmp_path: Path) -> None:
    own = "/kubepods.slice/pod-9.slice/cri-abc.scope"
    tree = v2_tree(tmp_path, own, root=own)
    tree.file("/sys/fs/cgroup/memory.max", str(384 * MB))
    assert tree.limit().bytes == 384 * MB


def test_v2_usage(tmp_path: Path) -> None:
    tree = v2_tree(tmp_path, "/job")
    tree.file("/sys/fs/cgroup/job/memory.current", str(42 * MB))
    assert cgroup_usage_bytes(str(tree.proc), str(tree.sys)) == 42 * MB


def test_hybrid_host_reads_both_hierarchies(tmp_path: Path) -> None:
    # Like this build machine: a v1 memory hierarchy plus an empty unified one at /unified.
    tree = v1_tree(tmp_path, "/process_api/abc")
    tree.file("/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes", str(900 * MB))
    tree.file("/sys/fs/cgroup/unified/cgroup.procs", "")
    limit = tree.limit()
    assert (limit.bytes, limit.source) == (900 * MB, "cgroup v1")


# -- missing and odd files -------------------------------------------------------------------------
def test_no_proc_files_falls_back_to_host(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path)
    limit = tree.limit()
    assert (limit.bytes, limit.source) == (HOST, "host")
    assert cgroup_limits(str(tree.proc), str(tree.sys)) == []
    assert cgroup_usage_bytes(str(tree.proc), str(tree.sys)) is None


def test_missing_limit_files_fall_back_to_host(tmp_path: Path) -> None:
    v1_tree(tmp_path / "a", "/job")
    v2_tree(tmp_path / "b", "/job")
    for sub in ("a", "b"):
        tree = FakeTree.__new__(FakeTree)
        tree.proc, tree.sys = tmp_path / sub / "proc", tmp_path / sub / "sysroot"
        assert tree.limit().source == "host"


@pytest.mark.parametrize("content", ["", "garbage", "-1", "0"])
def test_unreadable_limit_values_are_ignored(tmp_path: Path, content: str) -> None:
    tree = v1_tree(tmp_path, "/job")
    tree.file("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", content)
    assert tree.limit().source == "host"


def test_cgroup_without_memory_mount_is_ignored(tmp_path: Path) -> None:
    tree = FakeTree(tmp_path)
    tree.cgroup("4:memory:/job\n")
    tree.mountinfo("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    tree.file("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", str(100 * MB))
    assert tree.limit().source == "host"


# -- rlimits ---------------------------------------------------------------------------------------
def test_rlimit_as_binds_when_lowest(tmp_path: Path) -> None:
    tree = v2_tree(tmp_path, "/job")
    tree.file("/sys/fs/cgroup/job/memory.max", str(2048 * MB))

    def getrlimit(which: int) -> tuple[int, int]:
        if which == resource.RLIMIT_AS:
            return (1536 * MB, resource.RLIM_INFINITY)
        return (resource.RLIM_INFINITY, resource.RLIM_INFINITY)

    limit = tree.limit(getrlimit=getrlimit)
    assert (limit.bytes, limit.source, limit.detail) == (1536 * MB, "rlimit", "RLIMIT_AS")
    assert {c.source for c in limit.candidates} == {"host", "cgroup v2", "rlimit"}


def test_rlimit_rss_is_read_and_infinity_ignored() -> None:
    def getrlimit(which: int) -> tuple[int, int]:
        if which == resource.RLIMIT_RSS:
            return (700 * MB, 700 * MB)
        return (resource.RLIM_INFINITY, resource.RLIM_INFINITY)

    assert [(c.bytes, c.detail) for c in rlimits(getrlimit)] == [(700 * MB, "RLIMIT_RSS")]
    assert rlimits(no_rlimits) == []


def test_to_dict_lists_every_candidate(tmp_path: Path) -> None:
    tree = v1_tree(tmp_path, "/job")
    tree.file("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", str(512 * MB))
    out = tree.limit().to_dict()
    assert out["mb"] == 512.0
    assert out["source"] == "cgroup v1"
    assert [c["source"] for c in out["candidates"]] == ["host", "cgroup v1"]
    json.dumps(out)


def test_real_process_limit_is_at_most_host_ram() -> None:
    import psutil

    limit = effective_limit()
    assert 0 < limit.bytes <= psutil.virtual_memory().total
    assert limit.candidates[0].source == "host"


# -- a real child memory cgroup --------------------------------------------------------------------
REPORT = (
    "import json; from zerorag_guard.memory.limits import effective_limit; "
    "print(json.dumps(effective_limit().to_dict()))"
)


@pytest.mark.system
def test_real_child_cgroup_limit_is_reported() -> None:
    reason = cgroup_helpers.unavailable_reason()
    if reason is not None:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    import psutil

    wanted = 300 * MB
    host_ram = psutil.virtual_memory().total
    if host_ram <= wanted:
        pytest.skip(f"host RAM {host_ram} is not above the {wanted} bytes test limit")
    child: Optional[cgroup_helpers.ChildCgroup] = None
    try:
        with cgroup_helpers.child_memory_cgroup(wanted) as child:
            done = child.run([sys.executable, "-c", REPORT])
    except RuntimeError as err:
        print(f"skipping: {err}")
        pytest.skip(str(err))
    assert child is not None
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    print(
        f"child cgroup {child.path} ({child.version}): limit {child.limit_bytes} bytes; "
        f"reported {report['bytes']} bytes from {report['source']} {report['detail']}; "
        f"host RAM {host_ram}"
    )
    assert report["bytes"] == child.limit_bytes
    assert report["bytes"] != host_ram
    assert report["source"] == f"cgroup {child.version}"
    assert report["detail"] == child.limit_file
    # The cgroup is gone again.
    assert not Path(child.path).exists()
    # And the test process itself is still where it was.
    own = cgroup_helpers.own_memory_cgroup()
    assert own is not None and not own.path.startswith(child.path)
