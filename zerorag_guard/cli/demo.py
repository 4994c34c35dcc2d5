"""``zerorag-guard demo``: ingest the standard library's source into a vector store under a budget.

Prints a progress bar (rich, else plain lines), the summary (documents, passages, batches, batch
sizes, peak RSS against the budget, cleanups, time, throughput), the health status and a sample
search, and writes a PNG timeline of memory with the budget line. ``--compare`` then runs the
same ingestion in batches of a fixed size, unguarded, in a subprocess, and shows both peaks.
Exit code 1 when the guarded run went over its budget.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

from . import EXIT_FAILED, _args, _render
from ._plot import MissingExtra


def register(sub: Any) -> None:
    from ..rag.demo import DEFAULT_BATCH_SIZE, DEFAULT_BUDGET_MB, FIXED_BATCH_SIZE

    parser = sub.add_parser(
        "demo",
        help="ingest the stdlib's source into a vector store under a memory budget",
        description="Ingest the Python standard library's own source files, split into "
        "passages, embedded and upserted into an embedded vector store in adaptive batches "
        "under a memory budget; print the summary, the health status and a sample search, "
        "and write a PNG timeline of memory.",
    )
    parser.add_argument(
        "--store", choices=("chroma", "qdrant", "faiss"), default="chroma", help="the store"
    )
    parser.add_argument(
        "--limit", type=_args.positive_int, metavar="N", help="ingest the first N documents only"
    )
    parser.add_argument(
        "--budget-mb",
        type=_args.positive_float,
        default=DEFAULT_BUDGET_MB,
        metavar="MB",
        help=f"the memory budget: RSS ceiling in MB (default {DEFAULT_BUDGET_MB:.0f})",
    )
    parser.add_argument(
        "--batch-size",
        type=_args.positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"the largest batch of passages (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--out",
        default="zerorag_guard_demo",
        metavar="DIR",
        help="where the stores and the PNG go (default ./zerorag_guard_demo)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help=f"also run unguarded batches of {FIXED_BATCH_SIZE} in a subprocess, compare peaks",
    )
    parser.add_argument(
        "--fixed",
        type=_args.positive_int,
        metavar="N",
        help="run the unguarded baseline with batches of N passages (what --compare runs)",
    )
    parser.add_argument(
        "--embedder",
        choices=("hashing", "minilm", "auto"),
        default="hashing",
        help="hashing (default, numpy), minilm (the packaged all-MiniLM-L6-v2, extra "
        "'embeddings') or auto",
    )
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="do not write the PNG")
    _args.add_json(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..rag.demo import FIXED_BATCH_SIZE
    from ..rag.demo import run as run_job

    if args.plot and not args.json:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise MissingExtra(
                "demo writes its PNG with matplotlib, which is not installed: "
                "pip install 'zerorag_guard[demo]' (or pass --no-plot)"
            ) from None
    options = {
        "store": args.store,
        "limit": args.limit,
        "budget_mb": args.budget_mb,
        "out": args.out,
        "batch_size": args.batch_size,
        "fixed": args.fixed,
        "embedder": args.embedder,
    }
    try:
        if args.json:
            _render.print_json(run_job(**options))
            return 0
        mode = (
            f"unguarded batches of {args.fixed}"
            if args.fixed
            else f"budget {args.budget_mb:.0f} MB"
        )
        _render.heading(f"zerorag-guard demo: the stdlib's source into {args.store}, {mode}")
        with _progress_bar() as progress:
            result = run_job(**options, progress=progress)
    except ImportError as exc:
        raise MissingExtra(
            f"--store {args.store} / --embedder {args.embedder} needs a package that is not "
            f"installed ({exc}): pip install 'zerorag_guard[demo,vectorstores]'"
        ) from None
    fixed = _compare(args, FIXED_BATCH_SIZE) if args.compare else None
    summary(result)
    health(result["health"])
    search(result["search"])
    if fixed is not None:
        comparison(result, fixed)
    if args.plot:
        from ..rag.demo import write_timeline

        runs = [result] if fixed is None else [result, fixed]
        path = write_timeline(os.path.join(args.out, "demo-timeline.png"), runs, args.budget_mb)
        _render.echo(f"\nmemory timeline: {path}")
    return EXIT_FAILED if not args.fixed and not result["under_budget"] else 0


class _progress_bar:
    """A rich progress bar over documents, or a plain line every tenth of them."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._next = 0.0

    def __enter__(self) -> Callable[[dict[str, Any]], None]:
        if _render.console() is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=_render.console(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("documents", total=None)
        return self.update

    def update(self, p: dict[str, Any]) -> None:
        text = (
            f"{p['passages']:>6,} passages  batch {p['batch']:>5,}  "
            f"RSS {p['rss_mb']:>5.0f}/{p['budget_mb']:.0f} MB"
        )
        if self._bar is not None:
            self._bar.update(
                self._task, completed=p["documents"], total=p["total_documents"], description=text
            )
        elif p["documents"] >= self._next or p["documents"] == p["total_documents"]:
            print(f"{p['documents']:>5}/{p['total_documents']} documents  {text}", flush=True)
            self._next = p["documents"] + max(1, p["total_documents"] // 10)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()


def _compare(args: argparse.Namespace, size: int) -> dict[str, Any]:
    """The same ingestion in unguarded batches of ``size``, in a fresh interpreter."""
    command = [sys.executable, "-m", "zerorag_guard", "demo", "--fixed", str(size), "--json"]
    command += ["--store", args.store, "--budget-mb", str(args.budget_mb), "--out", args.out]
    command += ["--embedder", args.embedder] + (["--limit", str(args.limit)] if args.limit else [])
    _render.echo(f"\ncompare: the same ingestion in fixed batches of {size}, in a subprocess ...")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"the fixed-batch run failed ({done.returncode}): {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    _render.echo(f"done in {time.perf_counter() - started:.1f} s")
    return result


def summary(r: dict[str, Any]) -> None:
    over = "under" if r["under_budget"] else "OVER"
    cleanups = ", ".join(f"{k} {v}" for k, v in sorted(r["cleanups"].items())) or "none"
    _render.pairs(
        f"Summary ({r['mode']})",
        [
            ("documents", r["documents"]),
            ("passages", r["passages"]),
            ("stored", r["stored"]),
            ("batches", r["batches"]),
            ("batch size", f"{r['batch_size_min']} .. {r['batch_size_max']}"),
            ("peak RSS", f"{r['peak_mb']:,.1f} MB ({over} the budget of {r['budget_mb']:,.0f} MB)"),
            ("RSS at start", _render.mb(r["start_rss_mb"])),
            ("cleanups", cleanups),
            ("time", f"{r['seconds']:.1f} s"),
            ("passages per second", r["passages_per_second"]),
            ("store", f"{r['store']} at {r['store_path'] or 'memory'} ({r['embedder']})"),
        ],
    )


def health(h: dict[str, Any]) -> None:
    usage = h["memory_usage"]
    store = h["store"]
    writes = h["writes"]
    _render.pairs(
        "Health",
        [
            ("health score", f"{h['health_score']}/100 ({h.get('status', '-')})"),
            ("RSS now", f"{usage['rss_mb']:,.1f} MB (level {usage['level']})"),
            ("issues", "; ".join(h["health_issues"]) or "none"),
            ("store items", store["items"]),
            ("collection", store["collection"]),
            ("writes", f"{writes['batches']} batches, peak {writes['peak_mb']:,.1f} MB"),
        ],
    )


def search(s: dict[str, Any]) -> None:
    _render.heading("Sample search")
    _render.echo(f"query: {s['query'][:100]}...")
    verdict = "found" if s["found"] else "NOT found in the top hits"
    _render.echo(f"expects a passage of module {s['expected_module']}: {verdict}")
    rows = [
        (i + 1, h["module"], f"{h['score']:.3f}", h["text"].split("\n")[0][:60])
        for i, h in enumerate(s["hits"])
    ]
    _render.table("", ("#", "module", "score", "passage starts"), rows)


def comparison(guarded: dict[str, Any], fixed: dict[str, Any]) -> None:
    rows = []
    for r in (guarded, fixed):
        verdict = "under" if r["peak_mb"] <= r["budget_mb"] else "OVER"
        sizes = f"{r['batch_size_min']} .. {r['batch_size_max']}"
        rows.append((r["mode"], sizes, r["peak_mb"], r["budget_mb"], verdict, r["seconds"]))
    _render.table(
        "Guarded against fixed batches",
        ("run", "batch sizes", "peak MB", "budget MB", "", "seconds"),
        rows,
    )
