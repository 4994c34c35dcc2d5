"""Fake ``/proc`` and cgroup trees under a test's tmp_path (v1 and v2 mounts), and a host of
16 GiB with no rlimits: the effective limit and the group readings read them, exactly."""

from __future__ import annotations

import resource
from pathlib import Path

from zerorag_guard.memory.limits import effective_limit

MB = 1024 * 1024
HOST = 16 * 1024 * MB


def host() -> int:
    return HOST


def no_rlimits(_: int) -> tuple[int, int]:
    return (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


class FakeTree:
    """A fake /proc (``proc``) and a prefix for the cgroup mounts (``sys``) under tmp_path."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.sys = root / "sysroot"
        (self.proc / "self").mkdir(parents=True)

    def cgroup(self, text: str) -> None:
        (self.proc / "self" / "cgroup").write_text(text)

    def mountinfo(self, text: str) -> None:
        (self.proc / "self" / "mountinfo").write_text(text)

    def file(self, path: str, value: str) -> None:
        target = self.sys / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(value + "\n")

    def limit(self, getrlimit=no_rlimits, host_total=host):  # type: ignore[no-untyped-def]
        return effective_limit(
            str(self.proc), str(self.sys), host_total=host_total, getrlimit=getrlimit
        )


V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "35 31 0:32 {root} /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
V2_MOUNTINFO = (
    "25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw\n"
    "26 25 0:24 {root} /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n"
)


def v1_tree(tmp_path: Path, own: str, root: str = "/") -> FakeTree:
    tree = FakeTree(tmp_path)
    tree.cgroup(f"5:cpu,cpuacct:{own}\n4:memory:{own}\n0::/\n")
    tree.mountinfo(V1_MOUNTINFO.format(root=root))
    return tree


def v2_tree(tmp_path: Path, own: str, root: str = "/") -> FakeTree:
    tree = FakeTree(tmp_path)
    tree.cgroup(f"0::{own}\n")
    tree.mountinfo(V2_MOUNTINFO.format(root=root))
    return tree
