"""``zerorag-guard debug``: the comprehensive analysis, here or inside ``--pid``.

Top object types (pympler), top allocation sites (tracemalloc, started for a short window when
off), GC statistics, cgroup and malloc figures, and the monitor's history and alerts.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import _args, _render
from ._target import target_for


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "debug",
        help="comprehensive memory analysis",
        description="Top types (pympler), top allocation sites (tracemalloc), "
        "GC statistics, cgroup and malloc figures, the monitor's history and "
        "alerts.",
    )
    parser.add_argument(
        "--trace-seconds",
        type=_trace_seconds,
        default=1.0,
        metavar="S",
        help="when tracemalloc is off, trace allocations for S seconds (default 1; at most 10)",
    )
    parser.add_argument(
        "--top",
        type=_args.positive_int,
        default=15,
        metavar="N",
        help="rows per table (default 15)",
    )
    _args.add_json(parser)
    _args.add_pid(parser)
    parser.set_defaults(func=run)


def _trace_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 10, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    target = target_for(args)
    data = target.request(
        "debug", trace_seconds=args.trace_seconds, top=args.top, timeout=60.0 + args.trace_seconds
    )["debug"]
    if args.json:
        _render.print_json(data)
        return 0
    render(data, target.label)
    return 0


def _failed(section: Any) -> bool:
    if isinstance(section, dict) and "error" in section:
        _render.echo(f"unavailable: {section['error']}", style="red")
        return True
    return False


def render(data: dict[str, Any], label: str) -> None:
    usage = data["memory_usage"]
    _render.heading(f"Memory debug report: {label}")
    _render.echo(
        f"RSS {usage['rss_mb']:,.1f} MB, level {usage['level']}, health score "
        f"{data['health_score']}/100; Python {data['python']}"
    )
    for issue in data["health_issues"]:
        _render.echo(f"issue: {issue}", style="yellow")

    _render.heading("Top types (pympler)")
    types = data["top_types"]
    if not _failed(types):
        _render.table(
            "",
            ("type", "objects", "MB"),
            [(t["type"], t["count"], round(t["size_mb"], 2)) for t in types],
        )

    _render.heading("Top allocation sites (tracemalloc)")
    tm = data["tracemalloc"]
    if not _failed(tm):
        _render.echo(
            f"{tm['mode']}; traced now {tm['traced_current_mb']} MB, peak {tm['traced_peak_mb']} MB"
        )
        if tm["sites"]:
            _render.table(
                "",
                ("site", "KB", "blocks"),
                [(s["site"], s["size_kb"], s["count"]) for s in tm["sites"]],
            )
        else:
            _render.echo("no allocations traced in the window")

    _render.heading("Garbage collector")
    g = data["gc"]
    if not _failed(g):
        _render.echo(
            f"enabled {g['enabled']}, pending counts {g['counts']}, thresholds "
            f"{g['thresholds']}, tracked objects {g['tracked_objects']:,}, "
            f"gc.garbage {g['garbage']}, frozen {g['frozen']}"
        )
        _render.table(
            "",
            ("generation", "collections", "collected", "uncollectable"),
            [
                (i, s["collections"], s["collected"], s["uncollectable"])
                for i, s in enumerate(g["generations"])
            ],
        )

    _render.heading("cgroup")
    cg = data["cgroup"]
    if not _failed(cg):
        eff = cg["effective_limit"]
        _render.echo(
            f"usage {_render.mb(cg['usage_mb'])}; effective limit "
            f"{_render.mb(eff['mb'])} from {eff['source']}"
        )
        if cg["limits"]:
            _render.table(
                "",
                ("source", "limit", "file"),
                [(c["source"], _render.mb(c["mb"]), c["detail"]) for c in cg["limits"]],
            )
        else:
            _render.echo("no cgroup memory limit on this process's cgroup")

    _render.heading("malloc and kernel figures")
    mf = data["malloc"]
    if not _failed(mf):
        for name in ("mallinfo2", "status", "smaps_rollup"):
            figures = mf.get(name)
            if figures:
                _render.pairs(name, [(k, v) for k, v in figures.items()])
            else:
                _render.echo(f"{name}: not available here")

    _render.heading("Monitor")
    mon = data["monitor"]
    if not _failed(mon):
        _render.echo(
            f"level {mon['level']}, {mon['samples']} samples over "
            f"{mon['span_seconds']} s, RSS min {mon['rss_min_mb']} / max "
            f"{mon['rss_max_mb']} / last {mon['rss_last_mb']} MB"
        )
        _render.echo("trend " + _render.sparkline([s[1] for s in mon["recent"]], 40))
        if mon["alerts"]:
            _render.table(
                "Alerts",
                ("severity", "kind", "message"),
                [(a["severity"], a["kind"], a["message"]) for a in mon["alerts"][-20:]],
            )
        else:
            _render.echo("no alerts")
