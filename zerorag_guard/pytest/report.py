"""What the pytest plugin measures of one test and how it tells people: the figures, the top
allocation sites near the peak, the failure message and the ``--memory-report`` table.

Kept apart from :mod:`zerorag_guard.pytest_plugin`, which holds only the hooks and fixtures.
"""

from __future__ import annotations

import linecache
import os
import sys
import tracemalloc
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any, Callable, Optional

from ..memory.probes import MB

#: A new snapshot is taken when traced memory passes the last one by this much (and by 10%):
#: snapshots cost milliseconds, so they are taken a few times per test, not per allocation.
SNAPSHOT_STEP_BYTES = 1 * MB
_IGNORED = (
    tracemalloc.__file__,
    __file__,
    os.path.join(os.path.dirname(__file__), "plugin.py"),
    "<frozen importlib._bootstrap>",
    "<unknown>",
)


@dataclass(frozen=True)
class Site:
    """One source line and the memory its allocations held near the peak."""

    where: str
    size_bytes: int
    blocks: int
    code: str = ""

    def format(self) -> str:
        code = f": {self.code}" if self.code else ""
        size = (
            f"{self.size_bytes / MB:7.1f} MB"
            if self.size_bytes >= MB
            else f"{self.size_bytes / 1024:7.1f} KB"
        )
        return f"{size} in {self.blocks} blocks at {self.where}{code}"


@dataclass
class TestMemory:
    """One test's figures in MB: RSS at its start, its peak (the kernel's high-water mark) and at
    its end; ``tracer_mb`` is tracemalloc's own memory, already taken out of the peak."""

    __test__ = False  # not a test class, whatever pytest's collector thinks of the name

    nodeid: str
    start_mb: float
    peak_mb: float
    end_mb: float
    tracer_mb: float = 0.0
    sites: list[Site] = field(default_factory=list)

    @property
    def increase_mb(self) -> float:
        """How far the peak rose over the test's start."""
        return max(0.0, self.peak_mb - self.start_mb)

    @property
    def growth_mb(self) -> float:
        """What the test left behind: RSS at its end over RSS at its start."""
        return self.end_mb - self.start_mb

    def to_dict(self) -> dict[str, Any]:
        """Plain data: travels from pytest-xdist workers to the controller with the report."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestMemory:
        sites = [Site(**s) for s in data.get("sites", [])]
        return cls(**{**data, "sites": sites})

    def over_budget(self, limit_mb: Optional[float], increase_mb: Optional[float]) -> Optional[str]:
        """Why the test broke its budget, or None when it kept it."""
        if limit_mb is not None and self.peak_mb > limit_mb:
            return f"peak RSS {self.peak_mb:.1f} MB is over the limit of {limit_mb:.1f} MB"
        if increase_mb is not None and self.increase_mb > increase_mb:
            return (
                f"peak RSS rose {self.increase_mb:.1f} MB over the test's start "
                f"({self.start_mb:.1f} MB), over the increase limit of {increase_mb:.1f} MB"
            )
        return None

    def failure(self, why: str, source: str) -> str:
        """The report a failing test shows: the verdict, the figures and where memory went."""
        lines = [
            f"memory budget exceeded: {why} ({source})",
            f"  start {self.start_mb:.1f} MB, peak {self.peak_mb:.1f} MB "
            f"(+{self.increase_mb:.1f} MB), end {self.end_mb:.1f} MB ({self.growth_mb:+.1f} MB)",
        ]
        if self.tracer_mb:
            lines.append(f"  (tracemalloc's own {self.tracer_mb:.1f} MB taken out of the peak)")
        if self.sites:
            lines.append("top allocation sites near the peak (tracemalloc):")
            lines += [f"  {s.format()}" for s in self.sites]
        else:
            lines.append(
                "  (no allocation sites: they are traced for tests marked "
                "@pytest.mark.memory_budget)"
            )
        return "\n".join(lines)


class SiteTracer:
    """Finds the top allocation sites near a test's peak with tracemalloc.

    A snapshot at the end of a test misses what the test freed, its own locals included, so a
    profile hook looks at traced memory whenever a function returns (its locals still alive) and
    takes a snapshot each time it passes the last one by a step: the last snapshot is the one
    nearest the peak. Started only for tests that carry the marker: tracing slows a test down.
    """

    def __init__(self, top: int = 5) -> None:
        self.top = top
        self._started = False
        self._base: Optional[tracemalloc.Snapshot] = None
        self._best: Optional[tracemalloc.Snapshot] = None
        self._next = 0
        self.overhead_bytes = 0
        self._prev_profile: Optional[Callable[..., Any]] = None
        self._hooked = False

    def start(self) -> None:
        if tracemalloc.is_tracing():
            self._base = tracemalloc.take_snapshot()  # someone else traces: report the difference
        else:
            tracemalloc.start(1)
            self._started = True
        self._next = tracemalloc.get_traced_memory()[0] + SNAPSHOT_STEP_BYTES
        # A profiler or debugger already hooked in wins; sites then come from the end snapshot.
        if sys.getprofile() is None:
            sys.setprofile(self._on_event)
            self._hooked = True

    def _on_event(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "return" and tracemalloc.get_traced_memory()[0] > self._next:
            self._snapshot()

    def _snapshot(self) -> None:
        current = tracemalloc.get_traced_memory()[0]
        self._best = tracemalloc.take_snapshot()
        self._next = current + max(SNAPSHOT_STEP_BYTES, current // 10)
        self.overhead_bytes = max(self.overhead_bytes, tracemalloc.get_tracemalloc_memory())

    def stop(self) -> list[Site]:
        """Stop tracing; the top sites of the snapshot nearest the peak."""
        if self._hooked:
            sys.setprofile(None)
            self._hooked = False
        if not tracemalloc.is_tracing():
            return []
        if self._best is None or tracemalloc.get_traced_memory()[0] > self._next:
            self._snapshot()
        self.overhead_bytes = max(self.overhead_bytes, tracemalloc.get_tracemalloc_memory())
        if self._started:
            tracemalloc.stop()
            self._started = False
        assert self._best is not None
        best = self._best.filter_traces([tracemalloc.Filter(False, p) for p in _IGNORED])
        self._best = None
        if self._base is not None:
            stats = [
                (s.traceback[0], s.size_diff, s.count_diff)
                for s in best.compare_to(self._base, "lineno")
                if s.size_diff > 0
            ]
        else:
            stats = [(s.traceback[0], s.size, s.count) for s in best.statistics("lineno")]
        stats.sort(key=lambda s: s[1], reverse=True)
        # Sites under 1% of the largest are the test machinery's own small change.
        floor = stats[0][1] / 100 if stats else 0
        return [
            Site(
                f"{_short(frame.filename)}:{frame.lineno}",
                size,
                count,
                linecache.getline(frame.filename, frame.lineno).strip(),
            )
            for frame, size, count in stats[: self.top]
            if size >= floor
        ]


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith(".." + os.sep) else rel


def table(results: list[TestMemory]) -> list[str]:
    """The ``--memory-report`` table, biggest peak increase first."""
    if not results:
        return ["no test was measured"]
    rows = sorted(results, key=lambda r: r.increase_mb, reverse=True)
    width = min(max(len(r.nodeid) for r in rows), 80)
    lines = [
        f"{'test':<{width}}  {'peak MB':>9}  {'increase':>9}  {'growth':>9}",
        f"{'-' * width}  {'-' * 9}  {'-' * 9}  {'-' * 9}",
    ]
    for r in rows:
        name = r.nodeid if len(r.nodeid) <= width else "..." + r.nodeid[-(width - 3) :]
        lines.append(
            f"{name:<{width}}  {r.peak_mb:9.1f}  {r.increase_mb:+9.1f}  {r.growth_mb:+9.1f}"
        )
    return lines
