"""``zerorag-guard leaks MODULE:FUNC``: run a function under the leak profiler.

Exit codes: 0 no leak, 1 leaking, 2 bad usage (a ``MODULE:FUNC`` that cannot be imported, is
not callable or cannot take the ``--args`` given) or a target that raised; each error one line
on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from typing import Any, Callable

EXIT_NO_LEAK = 0
EXIT_LEAKING = 1
EXIT_USAGE = 2


def _count(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value

    return parse


def _kilobytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected kilobytes above 0, e.g. 1, got {text!r}")
    return value


def _arguments(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(
            f"expected the arguments as a JSON list, e.g. '[{{\"a\": 1}}]', got {text!r}"
        )
    return value


def register(sub: Any) -> None:
    """Add the ``leaks`` subcommand."""
    parser = sub.add_parser(
        "leaks",
        help="check a function for memory leaks",
        description="Call MODULE:FUNC (with the --args given, none by default) for warm-up "
        "rounds, then measure it over the iterations and report what grows per call. Exit 0 "
        "when nothing leaks, 1 when something does, 2 for bad usage or a target that raised.",
    )
    parser.add_argument(
        "target",
        metavar="MODULE:FUNC",
        help="an importable module and a callable in it, e.g. mypkg.jobs:ingest",
    )
    parser.add_argument(
        "--iterations", type=_count(2), default=10, help="measured rounds (default 10)"
    )
    parser.add_argument(
        "--warmup", type=_count(0), default=3, help="warm-up rounds before measuring (default 3)"
    )
    parser.add_argument(
        "--threshold-kb",
        type=_kilobytes,
        default=1.0,
        help="growth per iteration that counts as a leak, in KB (default 1)",
    )
    parser.add_argument(
        "--args",
        type=_arguments,
        default=[],
        metavar="JSON",
        help="positional arguments for each call, as a JSON list (default: none)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def resolve(target: str) -> Callable[..., Any]:
    """The callable named by ``MODULE:FUNC`` (FUNC may be dotted); ValueError saying why not."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"target {target!r} is not MODULE:FUNC, e.g. mypkg.jobs:ingest")
    # Like `python -m`, find modules in the working directory even from the console script.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's target, not ours
        raise ValueError(
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{target!r} is a {type(obj).__name__}, not a callable")
    return obj


def check_call(target: str, fn: Callable[..., Any], args: list[Any]) -> None:
    """ValueError when ``fn`` cannot be called with ``args`` (where its signature says)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin that does not tell: the call will say
        return
    try:
        signature.bind(*args)
    except TypeError as exc:
        given = f"--args {json.dumps(args)}" if args else "no arguments"
        raise ValueError(
            f"{target}{signature} cannot be called with {given} ({exc}); "
            f"pass its arguments as a JSON list, e.g. --args '[...]'"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Profile the target; the exit code says whether it leaks."""
    from ..leaks.profiler import LeakProfiler

    try:
        fn = resolve(args.target)
        check_call(args.target, fn, args.args)
    except ValueError as exc:
        print(f"zerorag-guard leaks: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    profiler = LeakProfiler(
        warmup=args.warmup, iterations=args.iterations, threshold_bytes=args.threshold_kb * 1024
    )
    try:
        report = profiler.check(fn, *args.args)
    except Exception as exc:  # the target's own failure, not the profiler's
        print(
            f"zerorag-guard leaks: error: {args.target} raised {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"target": args.target, **report.to_dict()}, indent=2))
    else:
        print(f"{args.target}: {report.format()}")
    return EXIT_LEAKING if report.leaking else EXIT_NO_LEAK
