"""``zerorag-guard checkpoint PATH``: what a job's checkpoint says (see ``checkpoint=``)."""

from __future__ import annotations

import argparse
from typing import Any

from ..budget.checkpoint import read_checkpoint
from . import _args, _render


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "checkpoint",
        help="show a job's checkpoint file",
        description="Show a checkpoint written by memory_budget(checkpoint=PATH) or "
        "guard_store(checkpoint=PATH): items done, the last batch and when, and the batch in "
        "flight when the job was killed (the next run starts at half its size).",
    )
    parser.add_argument("path", metavar="PATH", help="the checkpoint file")
    _args.add_json(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    state = read_checkpoint(args.path)
    if args.json:
        _render.print_json({"path": args.path, **state})
        return 0
    status = "complete" if state["complete"] else "not complete"
    lines = [
        f"checkpoint {args.path}: {status}, updated {state.get('updated', '?')}",
        f"  loop {state['loop']}: {state['done']:,} items done"
        + (" (loop finished)" if state["loop_complete"] else ""),
    ]
    if state.get("loops_done"):
        lines.append(f"  loops finished: {', '.join(f'{n:,}' for n in state['loops_done'])}")
    last = state.get("last_batch")
    if last:
        lines.append(f"  last batch: {last['size']:,} items, completed {last['finished']}")
    flight = state.get("in_flight")
    if flight:
        lines.append(
            f"  {flight['size']:,} items in flight from item {flight.get('start', '?'):,} since "
            f"{flight.get('since', '?')} (pid {flight.get('pid', '?')}): the run stopped "
            f"without finishing it; the next starts with {max(1, flight['size'] // 2):,}"
        )
    stopped = state.get("interrupted")
    if stopped:
        lines.append(
            f"  stopped by an exception at {stopped['at']} with {stopped['size']:,} items "
            "in hand (not counted as done)"
        )
    lines.append(f"  runs: {state.get('runs', '?')}, first started {state.get('started', '?')}")
    for line in lines:
        _render.echo(line)
    return 0
