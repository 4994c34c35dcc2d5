"""The health report: a score, the memory figures and the issues a person should act on.

Built from a plain :class:`Snapshot` of the monitor, so it can be tested with exact figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..config import GuardConfig
from ..events import Level, Sample
from ..memory.limits import EffectiveLimit
from .thresholds import Thresholds

MB = 1024 * 1024
_LEVEL_PENALTY = {Level.NORMAL: 0, Level.PREVENTIVE: 10, Level.HIGH: 30, Level.CRITICAL: 60}
#: A leak is suspected when RSS measured right after cleanups keeps rising this fast...
LEAK_SLOPE_MB_PER_MIN = 1.0
#: ... over at least this many cleanups spanning at least this long, with a good linear fit.
LEAK_MIN_POINTS = 4
LEAK_MIN_SPAN_SECONDS = 60.0
LEAK_MIN_R2 = 0.8


@dataclass
class Snapshot:
    """What the report is built from; the monitor fills it under its lock."""

    config: GuardConfig
    sample: Sample
    limit: EffectiveLimit
    thresholds: Thresholds
    peak_mb: float
    lifetime_peak_mb: float
    alert_counts: dict[str, int]
    episodes: dict[str, Any]
    recent_alerts: list[dict[str, Any]]
    operations: dict[str, dict[str, Any]]
    cleanup_counts: dict[str, int]
    freed_bytes: dict[str, int]
    after_cleanup: list[tuple[float, float]]
    queue_overflows: int
    services: dict[str, Any]
    gc_share: float
    wall: float
    pid: int
    group: dict[str, Any]


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope (y per x) and R² of ``points``; (0, 0) when undefined."""
    n = len(points)
    if n < 2:
        return 0.0, 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    syy = sum((p[1] - my) ** 2 for p in points)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    if sxx == 0:
        return 0.0, 0.0
    slope = sxy / sxx
    r2 = (sxy * sxy) / (sxx * syy) if syy > 0 else 0.0
    return slope, r2


def leak_trend(after_cleanup: list[tuple[float, float]]) -> Optional[dict[str, float]]:
    """The suspected leak from RSS measured right after cleanups, or None.

    Memory that survives cleanup after cleanup and keeps rising is what a leak looks like from
    outside, without running a profiler.
    """
    if len(after_cleanup) < LEAK_MIN_POINTS:
        return None
    span = after_cleanup[-1][0] - after_cleanup[0][0]
    if span < LEAK_MIN_SPAN_SECONDS:
        return None
    slope, r2 = linear_fit(after_cleanup)
    per_min = slope * 60.0
    if per_min < LEAK_SLOPE_MB_PER_MIN or r2 < LEAK_MIN_R2:
        return None
    return {
        "slope_mb_per_min": round(per_min, 2),
        "r2": round(r2, 3),
        "cleanups": len(after_cleanup),
        "span_seconds": round(span, 1),
    }


def build(s: Snapshot) -> dict[str, Any]:
    """The health dict of the public contract."""
    cfg = s.config
    rss = s.sample.rss_mb
    limit_mb = s.limit.bytes / MB
    issues: list[str] = []
    t = s.thresholds
    main_mb, critical_mb = t.main / MB, t.critical / MB
    score = 100 - _LEVEL_PENALTY[s.sample.level]
    if s.sample.level > Level.NORMAL:
        issues.append(
            f"memory level {s.sample.level.name}: {rss:.1f} MB (main threshold {main_mb:.0f} MB)"
        )
    if rss > 0.9 * limit_mb:
        score -= 20
        issues.append(
            f"RSS {rss:.1f} MB is above 90% of the effective limit "
            f"{limit_mb:.0f} MB ({s.limit.source})"
        )
    if t.problem is not None:
        score -= 15
        issues.append(f"thresholds do not fit this machine: {t.problem}")
    for name, value in (
        ("MEMORY_THRESHOLD_MB", cfg.threshold_mb),
        ("MEMORY_CRITICAL_THRESHOLD_MB", cfg.critical_threshold_mb),
    ):
        if isinstance(value, (int, float)) and value > limit_mb:
            score -= 15
            issues.append(
                f"{name}={value:g} MB is above the effective limit {limit_mb:.0f} MB "
                f"({s.limit.source} {s.limit.detail}): the job would be killed before "
                "the guard acts"
            )
    for name, op in s.operations.items():
        if op["calls"] >= 10 and op["error_rate"] > cfg.error_rate_threshold:
            score -= 10
            issues.append(f"operation {name} fails {op['error_rate']:.0%} of its calls")
    leak = leak_trend(s.after_cleanup)
    if leak is not None:
        score -= 15
        issues.append(
            f"suspected leak: RSS after cleanup rising {leak['slope_mb_per_min']} MB/min "
            f"over {leak['cleanups']} cleanups ({leak['span_seconds']:.0f} s)"
        )
    if s.queue_overflows:
        score -= 5
        issues.append(f"cleanup queue overflowed {s.queue_overflows} times")
    if s.gc_share > cfg.gc_time_budget:
        issues.append(
            f"routine GC took {s.gc_share:.1%} of wall time "
            f"(budget {cfg.gc_time_budget:.0%}); routine cleanups are being skipped"
        )
    score -= min(20, 5 * s.alert_counts.get("critical", 0))
    score = max(0, min(100, score))
    return {
        "health_score": score,
        "status": "healthy" if score >= 80 else "degraded" if score >= 50 else "unhealthy",
        "memory_usage": {
            "rss_mb": round(rss, 1),
            "peak_mb": round(s.peak_mb, 1),
            "lifetime_peak_mb": round(s.lifetime_peak_mb, 1),
            "limit_mb": round(limit_mb, 1),
            "limit_source": s.limit.source,
            "limit_detail": s.limit.detail,
            # The thresholds in force: the settings', derived (auto), or a budget's (source).
            "threshold_mb": main_mb,
            "preventive_threshold_mb": round(t.preventive / MB, 1),
            "critical_threshold_mb": critical_mb,
            "thresholds_source": t.source,
            "thresholds_why": dict(t.why),
            "percent_of_threshold": round(100.0 * rss / main_mb, 1),
            "percent_of_limit": round(100.0 * rss / limit_mb, 1) if limit_mb else None,
            "level": s.sample.level.name,
        },
        "health_issues": issues,
        "operations": s.operations,
        "alerts": {
            **{k: v for k, v in s.alert_counts.items()},
            "recent": s.recent_alerts,
            "episodes": s.episodes,
        },
        "cleanups": {
            k: {"count": s.cleanup_counts[k], "freed_mb": round(s.freed_bytes[k] / MB, 1)}
            for k in s.cleanup_counts
        },
        "leak": leak,
        "gc": {"share_of_wall_time": round(s.gc_share, 4), "budget": cfg.gc_time_budget},
        "services": s.services,
        "group": {
            # What a budget's default scope counts here (see zerorag_guard.budget.scope).
            "auto_counts": "process RSS and the cgroup's working set"
            if s.limit.source.startswith("cgroup")
            else "process RSS and the host's MemAvailable"
            + (", shared by the node" if cfg.share_node else ""),
            **s.group,
        },
        "config": cfg.to_dict(),
        "pid": s.pid,
        "timestamp": s.wall,
    }
