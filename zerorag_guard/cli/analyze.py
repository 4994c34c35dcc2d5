"""``zerorag-guard analyze``: usage, the effective limit and where it comes from, the group the
budgets share, the current thresholds, and the guide's recommendations for this machine or
container."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import GuardConfig, recommend_config
from . import _args, _render
from ._target import health_keys, target_for
from .report import render_group

#: Settings compared with the recommendation: (field, environment variable).
COMPARED = (
    ("threshold_mb", "MEMORY_THRESHOLD_MB"),
    ("critical_threshold_mb", "MEMORY_CRITICAL_THRESHOLD_MB"),
    ("batch_size", "BATCH_SIZE"),
    ("gc_interval_seconds", "GC_INTERVAL_SECONDS"),
)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "analyze",
        help="usage, effective limit, thresholds, recommendations",
        description="Show memory usage, the effective limit (host, cgroup, "
        "rlimit: every candidate), the current thresholds and the settings "
        "recommended for the memory this process can have.",
    )
    _args.add_json(parser)
    _args.add_pid(parser)
    parser.set_defaults(func=run)


def analysis(health: dict[str, Any], limit: dict[str, Any]) -> dict[str, Any]:
    """The analysis as data: recommendations are for the binding limit, not the host's RAM."""
    config, usage = health["config"], health["memory_usage"]
    rec = recommend_config(limit["mb"])
    changes = {
        env: _number(getattr(rec, name))
        for name, env in COMPARED
        # A threshold set to auto follows the machine: no number to recommend instead.
        if config[name] != "auto" and float(getattr(rec, name)) != float(config[name])
    }
    return {
        **health_keys(health),
        "pid": health["pid"],
        "effective_limit": limit,
        "thresholds": {  # in force: the settings', derived for auto, or a budget's
            "preventive_mb": usage["preventive_threshold_mb"],
            "main_mb": usage["threshold_mb"],
            "critical_mb": usage["critical_threshold_mb"],
            "batch_size": config["batch_size"],
            "gc_interval_seconds": config["gc_interval_seconds"],
        },
        "thresholds_source": usage.get("thresholds_source", "settings"),
        "thresholds_why": usage.get("thresholds_why", {}),
        "recommended": {"for_memory_mb": limit["mb"], **_settings(rec)},
        "recommended_changes": changes,
        "group": health.get("group"),
    }


def _settings(c: GuardConfig) -> dict[str, Any]:
    main = float(c.threshold_mb)  # recommend_config gives numbers
    return {
        "preventive_mb": round(main * c.preventive_ratio, 1),
        "main_mb": round(main, 1),
        "critical_mb": round(float(c.critical_threshold_mb), 1),
        "batch_size": c.batch_size,
        "gc_interval_seconds": c.gc_interval_seconds,
    }


def _number(value: Any) -> Any:
    return int(value) if float(value).is_integer() else round(float(value), 1)


def run(args: argparse.Namespace) -> int:
    target = target_for(args)
    reply = target.request("health")
    data = analysis(reply["health"], reply["limit"])
    if args.json:
        _render.print_json(data)
        return 0
    usage, limit = data["memory_usage"], data["effective_limit"]
    _render.heading(f"Memory analysis: {target.label}")
    _render.pairs(
        "Usage",
        [
            ("RSS", _render.mb(usage["rss_mb"])),
            ("level", usage["level"]),
            ("peak (monitor)", _render.mb(usage["peak_mb"])),
            ("percent of effective limit", f"{usage['percent_of_limit']}%"),
            ("health score", f"{data['health_score']}/100 ({data['status']})"),
        ],
    )
    _render.echo(
        f"effective limit: {_render.mb(limit['mb'])} from {limit['source']}"
        + (f" ({limit['detail']})" if limit["detail"] else "")
    )
    _render.table(
        "Limit candidates (the smallest binds)",
        ("source", "limit", "detail"),
        [(c["source"], _render.mb(c["bytes"] / 2**20), c["detail"]) for c in limit["candidates"]],
    )
    if data["group"] is not None:
        render_group(data["group"])
    now, rec = data["thresholds"], data["recommended"]
    _render.echo(
        f"recommendations are the guide's settings for {_render.mb(rec['for_memory_mb'])}"
        " of memory (the effective limit)"
    )
    _render.table(
        "Thresholds", ("setting", "current", "recommended"), [(k, now[k], rec[k]) for k in now]
    )
    if data["thresholds_source"] != "settings":
        _render.echo(f"thresholds in force: {data['thresholds_source']}")
        for name, why in data["thresholds_why"].items():
            _render.echo(f"  {name}: {why}")
    if data["recommended_changes"]:
        _render.echo("to apply the recommendation, set:")
        for env, value in data["recommended_changes"].items():
            _render.echo(f"  {env}={value}")
    else:
        _render.echo("the current settings match the recommendation")
    for issue in data["health_issues"]:
        _render.echo(f"issue: {issue}", style="yellow")
    return 0
