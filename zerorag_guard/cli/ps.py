"""``zerorag-guard ps``: this user's guarded processes (those with a control socket)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..control.client import list_processes, socket_dir
from . import _args, _render


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "ps",
        help="list this user's guarded processes",
        description="List this user's guarded processes (pid, RSS, level, the "
        "memory their budgets hold reserved in shared ledgers, command line); "
        "removes sockets left behind by dead processes.",
    )
    _args.add_json(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    found = list_processes()
    rows = []
    for entry in found:
        ping = entry.get("ping")
        if ping is None:
            rows.append(
                {
                    "pid": entry["pid"],
                    "rss_mb": None,
                    "level": None,
                    "reserved_mb": None,
                    "command": None,
                    "error": entry.get("error"),
                }
            )
        else:
            rows.append(
                {
                    "pid": entry["pid"],
                    "rss_mb": ping["rss_mb"],
                    "level": ping["level"],
                    "reserved_mb": ping.get("reserved_mb"),  # older versions report none
                    "command": ping["cmdline"],
                    "error": None,
                }
            )
    if args.json:
        _render.print_json(rows)
        return 0
    if not rows:
        _render.echo(f"no guarded processes of uid {os.getuid()} (sockets in {socket_dir()})")
        return 0
    _render.table(
        f"Guarded processes of uid {os.getuid()}",
        ("PID", "RSS", "LEVEL", "RESERVED", "COMMAND"),
        [
            (
                str(r["pid"]),
                _render.mb(r["rss_mb"]),
                r["level"] or "-",
                _render.mb(r["reserved_mb"]),
                r["command"] or f"({r['error']})",
            )
            for r in rows
        ],
    )
    return 0
