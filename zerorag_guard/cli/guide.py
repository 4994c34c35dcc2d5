"""The product guide's own command forms, kept working verbatim.

``python scripts/optimize_memory.py --report | --analyze | --cleanup | --aggressive |
--monitor 60 | --optimize 800`` and ``python debug_memory_usage.py`` are thin files calling
:func:`optimize_memory` and :func:`debug_memory_usage`, which translate the flags into
``zerorag-guard`` subcommands: the output is the same.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import ArgumentParser, _args, main


def _translate(args: argparse.Namespace) -> list[str]:
    if args.monitor is not None:
        argv = ["monitor", repr(args.monitor)]
    elif args.optimize is not None:
        argv = ["optimize", repr(args.optimize)]
    elif args.cleanup or args.aggressive:
        argv = ["cleanup"] + (["--aggressive"] if args.aggressive else [])
    elif args.analyze:
        argv = ["analyze"]
    else:
        argv = ["report"]
    if args.json:
        argv.append("--json")
    if args.pid is not None:
        argv += ["--pid", str(args.pid)]
    return argv


def optimize_memory(argv: Optional[Sequence[str]] = None) -> int:
    """``scripts/optimize_memory.py``: one action per run (``--report`` when none is given)."""
    parser = ArgumentParser(
        prog="optimize_memory.py",
        description="The guide's memory tool; each flag runs the "
        "zerorag-guard subcommand of the same name.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--report", action="store_true", help="health report (the default)")
    action.add_argument(
        "--analyze", action="store_true", help="usage, effective limit, thresholds, recommendations"
    )
    action.add_argument(
        "--monitor",
        type=_args.positive_float,
        metavar="SECONDS",
        help="watch memory live for SECONDS",
    )
    action.add_argument(
        "--optimize",
        type=_args.positive_float,
        metavar="TARGET_MB",
        help="settings to stay under TARGET_MB",
    )
    parser.add_argument("--cleanup", action="store_true", help="run a cleanup now")
    parser.add_argument(
        "--aggressive",
        action="store_true",
        help="run an aggressive cleanup (with or without --cleanup)",
    )
    _args.add_json(parser)
    _args.add_pid(parser)
    args = parser.parse_args(argv)
    chosen = [args.report, args.analyze, args.monitor is not None, args.optimize is not None]
    if (args.cleanup or args.aggressive) and any(chosen):
        parser.error("--cleanup/--aggressive cannot be combined with another action")
    return main(_translate(args))


def debug_memory_usage(argv: Optional[Sequence[str]] = None) -> int:
    """``debug_memory_usage.py``: the comprehensive analysis (``zerorag-guard debug``)."""
    parser = ArgumentParser(
        prog="debug_memory_usage.py",
        description="The guide's memory debugging tool: zerorag-guard debug.",
    )
    _args.add_json(parser)
    _args.add_pid(parser)
    args = parser.parse_args(argv)
    argv_out = ["debug"] + (["--json"] if args.json else [])
    if args.pid is not None:
        argv_out += ["--pid", str(args.pid)]
    return main(argv_out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(optimize_memory())
