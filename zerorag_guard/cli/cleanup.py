"""``zerorag-guard cleanup [--aggressive]``: run a cleanup now, here or inside ``--pid``."""

from __future__ import annotations

import argparse
from typing import Any

from . import _args, _render
from ._target import health_keys, target_for


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "cleanup",
        help="run a cleanup now and show what it freed",
        description="Run a standard cleanup (full GC, registered caches) or, "
        "with --aggressive, several GC passes, every cache, malloc_trim.",
    )
    parser.add_argument(
        "--aggressive",
        action="store_true",
        help="aggressive cleanup: several full GC passes, every registered cache, malloc_trim(0)",
    )
    _args.add_json(parser)
    _args.add_pid(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = target_for(args)
    strategy = "aggressive" if args.aggressive else "standard"
    result = target.request("cleanup", strategy=strategy)["result"]
    health = target.health()
    if args.json:
        _render.print_json({"pid": target.pid, "cleanup": result, **health_keys(health)})
        return 0
    before, after = result["rss_before"] / 2**20, result["rss_after"] / 2**20
    _render.heading(f"{strategy.capitalize()} cleanup: {target.label}")
    _render.echo(
        f"RSS {before:,.1f} MB -> {after:,.1f} MB (freed {result['freed_bytes'] / 2**20:,.1f} MB)",
        style="green",
    )
    _render.pairs(
        "",
        [
            ("objects collected", result["collected"]),
            ("caches cleared", result["caches_cleared"]),
            ("history entries dropped", result["trimmed"]),
            ("malloc_trim returned memory", "yes" if result["malloc_trimmed"] else "no"),
            ("time", f"{result['seconds'] * 1000:,.1f} ms"),
            ("level now", health["memory_usage"]["level"]),
            ("health score", f"{health['health_score']}/100"),
        ],
    )
    return 0
