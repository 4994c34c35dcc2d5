"""``zerorag-guard optimize TARGET_MB``: settings that keep the process under a memory target.

The critical threshold (where aggressive cleanup runs) is put 10% under the target, so a spike
between two samples still lands below it; the main threshold at 75% and the preventive at 80% of
that, the guide's own proportions. Batch size and GC interval follow the guide's table for a
target of that size, scaled down by how little room the process's current memory leaves.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import _args, _render
from ._target import health_keys, target_for

EXIT_UNREACHABLE = 1
#: (critical threshold up to this many MB, batch size, GC interval): the guide's rows.
_ROWS = ((800.0, 50, 120.0), (1200.0, 100, 180.0), (float("inf"), 150, 300.0))


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "optimize",
        help="recommend settings to stay under TARGET_MB",
        description="Recommend thresholds, batch size and GC interval that "
        "keep the process under TARGET_MB; says when the target is below "
        "what the process already needs (exit code 1).",
    )
    parser.add_argument(
        "target_mb",
        type=_args.positive_float,
        metavar="TARGET_MB",
        help="the memory the process must stay under, in MB (above 0)",
    )
    _args.add_json(parser)
    _args.add_pid(parser)
    parser.set_defaults(func=run)


def recommend(target_mb: float, rss_mb: float) -> dict[str, Any]:
    """The recommendation for ``target_mb`` given the process's current RSS."""
    critical = 0.9 * target_mb
    main = 0.75 * target_mb
    batch, gc_s = next((b, g) for top, b, g in _ROWS if critical <= top)
    if critical < _ROWS[0][0]:
        batch = max(1, round(batch * critical / _ROWS[0][0]))
    # Room left above what the process holds now, as a share of the main threshold.
    room = max(0.0, min(1.0, (main - rss_mb) / (0.5 * main)))
    notes: list[str] = []
    feasible = rss_mb < target_mb
    if not feasible:
        notes.append(
            f"the target {target_mb:,.0f} MB is below what the process already needs "
            f"({rss_mb:,.1f} MB RSS now): no setting can keep it under; free memory "
            "first (cleanup --aggressive) or raise the target"
        )
    elif rss_mb >= main:
        notes.append(
            f"the process already uses {rss_mb:,.1f} MB, above the main threshold "
            f"{main:,.0f} MB these settings give: cleanups would run all the time; a "
            f"target of at least {rss_mb / 0.75 * 1.25:,.0f} MB leaves working room"
        )
    if room < 1.0:
        batch = max(1, round(batch * max(room, 0.1)))
        gc_s = min(gc_s, 60.0)
        notes.append(
            f"little room above the current {rss_mb:,.1f} MB: smaller batches and a GC every 60 s"
        )
    settings = {
        "MEMORY_THRESHOLD_MB": round(main),
        "MEMORY_CRITICAL_THRESHOLD_MB": round(critical),
        "BATCH_SIZE": batch,
        "GC_INTERVAL_SECONDS": round(gc_s),
    }
    return {
        "target_mb": target_mb,
        "rss_mb": round(rss_mb, 1),
        "feasible": feasible,
        "preventive_threshold_mb": round(0.8 * main),
        "settings": settings,
        "notes": notes,
    }


def run(args: argparse.Namespace) -> int:
    target = target_for(args)
    health = target.health()
    data = recommend(args.target_mb, float(health["memory_usage"]["rss_mb"]))
    code = 0 if data["feasible"] else EXIT_UNREACHABLE
    if args.json:
        _render.print_json({"pid": target.pid, **data, **health_keys(health)})
        return code
    _render.heading(f"Settings to stay under {args.target_mb:,.0f} MB: {target.label}")
    _render.echo(f"current RSS {data['rss_mb']:,.1f} MB, level {health['memory_usage']['level']}")
    s = data["settings"]
    _render.pairs(
        "Recommended",
        [
            (
                "main threshold",
                f"{s['MEMORY_THRESHOLD_MB']:,} MB (preventive cleanup from "
                f"{data['preventive_threshold_mb']:,} MB)",
            ),
            ("critical threshold", f"{s['MEMORY_CRITICAL_THRESHOLD_MB']:,} MB"),
            ("batch size", s["BATCH_SIZE"]),
            ("GC interval", f"{s['GC_INTERVAL_SECONDS']} s"),
        ],
    )
    _render.echo("environment:")
    for key, value in s.items():
        _render.echo(f"  {key}={value}")
    for note in data["notes"]:
        _render.echo(f"note: {note}", style="yellow" if data["feasible"] else "bold red")
    return code
