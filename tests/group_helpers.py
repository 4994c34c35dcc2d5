"""Group readings a test sets (a fake cgroup, tree, host and PSI, with a ledger) and a busy v2
group over a fake tree: for scope, pressure and exporter tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from fake_trees import v2_tree

from zerorag_guard.memory.cgroups import Cgroup, GroupPeak
from zerorag_guard.memory.group import GroupReader
from zerorag_guard.memory.ledger import Ledger
from zerorag_guard.memory.probes import MB


class FakeGroup:
    """Group readings a test sets in MB (None: not available), and a ledger it owns."""

    enabled = True

    def __init__(self, sleep: Callable[[float], None] = lambda _: None) -> None:
        self.cgroup: Optional[Cgroup] = Cgroup("v2", "/fake/job")
        self.working_set_mb: Optional[float] = None
        self.available_mb: Optional[float] = None
        self.tree_mb: Optional[float] = None
        self.pressure_percent: Optional[float] = None  # PSI's some avg10
        self.pending_mb = 0.0  # seen by the next tree reading only: a batch's transient peak
        self.the_ledger = Ledger(sleep=sleep)
        self.keys: list[Optional[str]] = []

    def ledger(self, key: Optional[str]) -> Ledger:
        self.keys.append(key)
        return self.the_ledger

    def working_set(self, ceiling: Optional[int] = None) -> Optional[int]:
        return None if self.working_set_mb is None else int(self.working_set_mb * MB)

    def host_available(self, own: Optional[int] = None) -> Optional[int]:
        return None if self.available_mb is None else int(self.available_mb * MB)

    def tree(self, root: int) -> Optional[int]:
        if self.tree_mb is None:
            return None
        value, self.pending_mb = self.tree_mb + self.pending_mb, 0.0
        return int(value * MB)

    def pressure(self) -> Optional[float]:
        return self.pressure_percent

    def peak(self) -> Optional[GroupPeak]:
        return None if self.cgroup is None else GroupPeak(self.cgroup)  # sampled: no such file


def busy_v2_group(tmp_path: Path) -> tuple[GroupReader, str]:
    """Group readings over a fake v2 tree: a 1000 MB cgroup using 650 MB, 550 of it inactive
    file cache, PSI at 12.5%, 1000 MB available on the host; returns them and the tree's root."""
    tree = v2_tree(tmp_path, "/job")
    tree.file("/sys/fs/cgroup/job/memory.current", str(650 * MB))
    tree.file("/sys/fs/cgroup/job/memory.stat", f"anon {100 * MB}\ninactive_file {550 * MB}")
    tree.file("/sys/fs/cgroup/job/memory.max", str(1000 * MB))
    tree.file("/sys/fs/cgroup/job/memory.pressure", "some avg10=12.50 avg60=3 avg300=1 total=9")
    (tree.proc / "meminfo").write_text("MemTotal: 2048000 kB\nMemAvailable: 1024000 kB\n")
    return GroupReader(str(tree.proc), str(tree.sys), ledger=Ledger()), str(tree.sys)
