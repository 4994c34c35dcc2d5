"""``zerorag-guard report``: the health report of this process or of a guarded one (``--pid``)."""

from __future__ import annotations

import argparse
from typing import Any

from . import _args, _render
from ._target import target_for


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "report",
        help="print the health report",
        description="Print the health report: score, memory against the "
        "thresholds and the effective limit, issues, alerts, cleanups.",
    )
    _args.add_json(parser)
    _args.add_pid(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = target_for(args)
    health = target.health()
    if args.json:
        _render.print_json(health)
        return 0
    render(health, target.label)
    return 0


def render(health: dict[str, Any], label: str) -> None:
    """The report as tables (shared with the guide's ``--report``)."""
    usage = health["memory_usage"]
    _render.heading(f"Memory health report: {label}")
    style = {"healthy": "green", "degraded": "yellow"}.get(health["status"], "bold red")
    _render.echo(f"health score {health['health_score']}/100 ({health['status']})", style=style)
    _render.pairs(
        "Memory",
        [
            ("RSS", _render.mb(usage["rss_mb"])),
            ("level", usage["level"]),
            ("peak (monitor)", _render.mb(usage["peak_mb"])),
            ("lifetime peak", _render.mb(usage["lifetime_peak_mb"])),
            ("preventive threshold", _render.mb(usage["preventive_threshold_mb"])),
            ("main threshold", _render.mb(usage["threshold_mb"])),
            ("critical threshold", _render.mb(usage["critical_threshold_mb"])),
            ("percent of main threshold", f"{usage['percent_of_threshold']}%"),
            ("effective limit", f"{_render.mb(usage['limit_mb'])} ({usage['limit_source']})"),
        ],
    )
    if "group" in health:  # a process of an older version reports none
        render_group(health["group"])
    issues = health["health_issues"]
    _render.heading("Health issues" if issues else "Health issues: none")
    for issue in issues:
        _render.echo(f"- {issue}", style="yellow")
    alerts = health.get("alerts", {})
    counts = ", ".join(f"{k} {alerts.get(k, 0)}" for k in ("info", "medium", "high", "critical"))
    _render.echo(f"alerts: {counts}")
    render_episodes(alerts.get("episodes"))
    cleanups = health.get("cleanups", {})
    if cleanups:
        _render.echo(
            "cleanups: "
            + ", ".join(f"{k} {v['count']} (freed {v['freed_mb']} MB)" for k, v in cleanups.items())
        )
    ops = health.get("operations") or {}
    if ops:
        _render.table(
            "Guarded operations",
            ("operation", "calls", "errors", "avg s", "peak MB"),
            [
                (n, o["calls"], o["errors"], round(o["avg_seconds"], 3), o["peak_mb"])
                for n, o in ops.items()
            ],
        )


def render_episodes(episodes: Any) -> None:
    """Alert episodes not over yet, each once with how often it came back (an older version
    of a guarded process reports none)."""
    if not episodes:
        return
    repeats = episodes.get("repeats") or {}
    if repeats:
        counted = ", ".join(f"{k} {v}" for k, v in sorted(repeats.items()))
        _render.echo(f"alerts counted on open episodes instead of raised again: {counted}")
    rows = [
        (
            e["severity"],
            e["kind"] + (f" ({e['subject']})" if e["subject"] else ""),
            e["level"],
            e["repeats"],
            _render.mb(e["peak_mb"]),
            "memory below it" if e["left"] is not None else "holds",
        )
        for e in episodes.get("open", [])
    ]
    if rows:
        _render.table(
            "Open alert episodes",
            ("severity", "kind", "level", "repeats", "peak", "now"),
            rows,
        )


def render_group(group: dict[str, Any]) -> None:
    """The health report's ``group`` section: what the budgets' scopes count and who holds
    reservations in the ledgers this process shares (shared with ``analyze``)."""
    cgroup = group.get("cgroup")
    _render.pairs(
        "Group (what budgets share)",
        [
            ("scope auto counts", group.get("auto_counts")),
            ("cgroup", "-" if cgroup is None else f"{cgroup['path']} ({cgroup['version']})"),
            ("cgroup usage", _render.mb(group.get("cgroup_usage_mb"))),
            ("cgroup working set", _render.mb(group.get("cgroup_working_set_mb"))),
            ("cgroup limit", _render.mb(group.get("cgroup_limit_mb"))),
            ("host MemAvailable", _render.mb(group.get("host_available_mb"))),
            ("PSI some avg10", _percent(group.get("pressure_some_avg10"))),
            ("reserved", _render.mb(group.get("reserved_mb"))),
            ("processes reserving", group.get("processes_reserving")),
        ],
    )
    loops = group.get("reservations") or []
    if loops:
        _render.table(
            "Loops holding reservations",
            ("ledger", "pid", "loop", "reserved MB"),
            [(r["ledger"], r["pid"], r["loop"], round(r["bytes"] / 2**20, 1)) for r in loops],
        )


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}%"
