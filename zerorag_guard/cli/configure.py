"""``zerorag-guard configure --pid PID KEY=VALUE ...``: change a running process's settings."""

from __future__ import annotations

import argparse
from typing import Any

from . import _args, _render
from ._target import health_keys, target_for


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "configure",
        help="change a guarded process's settings at run time",
        description="Change settings of the running guarded process PID, "
        "validated there as from the environment, e.g. "
        "MEMORY_THRESHOLD_MB=800 or threshold_mb=800.",
    )
    parser.add_argument(
        "changes",
        nargs="+",
        type=_args.assignment,
        metavar="KEY=VALUE",
        help="a setting's variable or field name and its new value",
    )
    _args.add_json(parser)
    _args.add_pid(parser, required=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = target_for(args)
    before = target.health()["config"]
    changes = dict(args.changes)
    after = target.request("configure", changes=changes)["config"]
    health = target.health()
    if args.json:
        _render.print_json({"pid": target.pid, "config": after, **health_keys(health)})
        return 0
    _render.heading(f"Settings changed: {target.label}")
    _render.table(
        "",
        ("setting", "before", "after"),
        [(name, before.get(name), after.get(name)) for name in changes],
    )
    usage = health["memory_usage"]
    _render.echo(
        f"now: RSS {usage['rss_mb']:,.1f} MB, level {usage['level']}, "
        f"health score {health['health_score']}/100"
    )
    return 0
