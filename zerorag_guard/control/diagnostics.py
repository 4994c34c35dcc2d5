"""The comprehensive analysis behind ``zerorag-guard debug``, gathered inside the process studied.

It runs in the CLI's own process, or inside a guarded process when asked through the control
socket (``debug --pid``). Every section is gathered on its own: one that fails says why and the
others still come back.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import tracemalloc
from typing import Any, Callable

from ..memory import limits, probes
from ..monitor.monitor import MemoryMonitor

MB = 1024 * 1024
_STATUS_KEYS = ("VmRSS", "VmHWM", "VmSize", "VmPeak", "RssAnon", "RssFile", "RssShmem", "VmSwap")


def collect(monitor: MemoryMonitor, trace_seconds: float = 1.0, top: int = 15) -> dict[str, Any]:
    """Every section of the debug report, as plain data."""
    # tracemalloc first, so the window sees the process's own work, not pympler's walk.
    sections: dict[str, Callable[[], Any]] = {
        "tracemalloc": lambda: top_sites(trace_seconds, top),
        "top_types": lambda: top_types(top),
        "gc": gc_stats,
        "cgroup": lambda: cgroup_figures(monitor),
        "malloc": malloc_figures,
        "monitor": lambda: monitor_figures(monitor),
    }
    health = monitor.get_health_status()
    out: dict[str, Any] = {
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "health_score": health["health_score"],
        "status": health["status"],
        "memory_usage": health["memory_usage"],
        "health_issues": health["health_issues"],
    }
    for name, gather in sections.items():
        try:
            out[name] = gather()
        except Exception as exc:  # a section that cannot be read must not hide the others
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def top_sites(trace_seconds: float, top: int) -> dict[str, Any]:
    """Where live memory was allocated, by source line. Tracing costs time and memory, so when
    it is off it is started for ``trace_seconds`` only and sees what was allocated meanwhile."""
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start(1)
        time.sleep(trace_seconds)
    try:
        snapshot = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        if started_here:
            tracemalloc.stop()
    snapshot = snapshot.filter_traces(
        (
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
        )
    )
    sites = [
        {
            "site": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
            "size_kb": round(s.size / 1024, 1),
            "count": s.count,
        }
        for s in snapshot.statistics("lineno")[:top]
    ]
    mode = (
        f"traced for {trace_seconds:g} s (tracemalloc was off)"
        if started_here
        else "tracemalloc already running"
    )
    return {
        "mode": mode,
        "traced_current_mb": round(current / MB, 2),
        "traced_peak_mb": round(peak / MB, 2),
        "sites": sites,
    }


def top_types(top: int) -> list[dict[str, Any]]:
    """The object types holding the most memory (pympler's muppy summary)."""
    from pympler import muppy, summary

    objects = muppy.get_objects()
    try:
        rows = summary.summarize(objects)
    finally:
        del objects
    rows.sort(key=lambda r: r[2], reverse=True)
    return [
        {"type": str(name), "count": int(count), "size_mb": round(size / MB, 3)}
        for name, count, size in rows[:top]
    ]


def gc_stats() -> dict[str, Any]:
    """The collector's state: per-generation statistics, pending counts, thresholds."""
    return {
        "enabled": gc.isenabled(),
        "counts": list(gc.get_count()),
        "thresholds": list(gc.get_threshold()),
        "generations": gc.get_stats(),
        "garbage": len(gc.garbage),
        "frozen": gc.get_freeze_count(),
        "tracked_objects": len(gc.get_objects()),
    }


def cgroup_figures(monitor: MemoryMonitor) -> dict[str, Any]:
    """Memory charged to the process's cgroup, its limits and the effective limit."""
    usage = limits.cgroup_usage_bytes()
    return {
        "usage_mb": None if usage is None else round(usage / MB, 1),
        "limits": [
            {"mb": round(c.bytes / MB, 1), "source": c.source, "detail": c.detail}
            for c in limits.cgroup_limits()
        ],
        "effective_limit": monitor.effective_limit(refresh=True).to_dict(),
    }


def mallinfo2() -> dict[str, float] | None:
    """glibc's heap figures in MB (glibc 2.33 and later; None elsewhere)."""
    info = probes.mallinfo2()
    if info is None:
        return None
    return {
        "heap_mb (arena)": round(info["arena"] / MB, 2),
        "mmapped_mb (hblkhd)": round(info["hblkhd"] / MB, 2),
        "in_use_mb (uordblks)": round(info["uordblks"] / MB, 2),
        "free_in_heap_mb (fordblks)": round(info["fordblks"] / MB, 2),
        "trimmable_mb (keepcost)": round(info["keepcost"] / MB, 2),
    }


def _kb_file(path: str, keys: tuple[str, ...] | None = None) -> dict[str, float]:
    out = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB" and (keys is None or key in keys):
                out[key + "_mb"] = round(int(parts[0]) / 1024, 2)
    return out


def malloc_figures() -> dict[str, Any]:
    """The allocator's view (mallinfo2) and the kernel's (status, smaps_rollup): free heap that
    RSS still counts is what ``malloc_trim`` (aggressive cleanup) can return."""
    out: dict[str, Any] = {"mallinfo2": mallinfo2()}
    for name, path, keys in (
        ("status", "/proc/self/status", _STATUS_KEYS),
        ("smaps_rollup", "/proc/self/smaps_rollup", None),
    ):
        try:
            out[name] = _kb_file(path, keys)
        except OSError:
            out[name] = None
    return out


def monitor_figures(monitor: MemoryMonitor, recent: int = 20) -> dict[str, Any]:
    """The monitor's history in brief, and its alerts."""
    history = monitor.history
    rss = [s.rss_mb for s in history]
    return {
        "level": monitor.level.name,
        "samples": len(history),
        "span_seconds": round(history[-1].time - history[0].time, 1) if history else 0.0,
        "rss_min_mb": round(min(rss), 1) if rss else None,
        "rss_max_mb": round(max(rss), 1) if rss else None,
        "rss_last_mb": round(rss[-1], 1) if rss else None,
        "recent": [[round(s.time, 3), round(s.rss_mb, 1), s.level.name] for s in history[-recent:]],
        "alerts": [a.to_dict() for a in monitor.alerts],
    }
