"""Guarded jobs that share one memory: loops in threads or asyncio tasks, or a pool of workers.

Run as a script (one JSON line on stdout):

- ``python group_job.py threads|tasks --loops N --items I --item-kb K --limit-mb L``: N loops,
  each ``memory_budget(L)`` over its own I items that each hold K KB until their batch ends;
  ``--loops 1 --items N*I`` is the same work done by one loop. ``--passes P`` hashes each
  item's memory P times (an embedder's work over its input).
- ``python group_job.py tree --workers W --items I --item-kb K --limit-mb L``: one
  ``memory_budget(L, scope="tree")`` (or ``--scope S``) whose batches are split over a W-worker
  pool; each worker holds its share of the batch for ``--hold-ms`` before it returns.

Every item's index is summed, so the report says whether each was handled exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import threading
import time
from typing import Any

from zerorag_guard import memory_budget

MB = 1024 * 1024


def embed(item_kb: int, passes: int) -> bytearray:
    """One item's memory (``item_kb``, touched), and ``passes`` of hashing over it: the work of
    an embedder over its input (hashlib releases the GIL over large buffers, as torch does)."""
    data = bytearray(b"x" * (item_kb * 1024))
    for _ in range(passes):
        hashlib.sha256(data).digest()
    return data


def hold(items: list[int], item_kb: int, hold_ms: float = 0.0) -> int:
    """Allocate and touch ``item_kb`` for each item, keep it ``hold_ms``, return the items' sum."""
    held = [bytearray(b"x" * (item_kb * 1024)) for _ in items]
    if hold_ms:
        time.sleep(hold_ms / 1000)
    del held
    return sum(items)


def loops(args: argparse.Namespace) -> dict[str, Any]:
    sums, batches = [0] * args.loops, [0] * args.loops
    start = threading.Barrier(args.loops) if args.mode == "threads" else None

    def one(n: int) -> None:
        assert start is not None
        start.wait()
        items = range(n * args.items, (n + 1) * args.items)
        with memory_budget(args.limit_mb, batch_size=args.batch) as budget:
            for batch in budget.chunks(items):
                held = [embed(args.item_kb, args.passes) for _ in batch]
                sums[n] += sum(batch)
                del held
        batches[n] = len(budget.batch_sizes)

    async def task(n: int) -> None:
        items = range(n * args.items, (n + 1) * args.items)
        async with memory_budget(args.limit_mb, batch_size=args.batch) as budget:
            async for batch in budget.achunks(items):
                held = []
                for _ in batch:  # an async embedder: the other tasks run between items
                    held.append(embed(args.item_kb, args.passes))
                    await asyncio.sleep(0)
                sums[n] += sum(batch)
                del held
        batches[n] = len(budget.batch_sizes)

    began = time.perf_counter()
    if args.mode == "threads":
        threads = [threading.Thread(target=one, args=(n,)) for n in range(args.loops)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:

        async def main() -> None:
            await asyncio.gather(*(task(n) for n in range(args.loops)))

        asyncio.run(main())
    seconds = time.perf_counter() - began
    total = args.loops * args.items
    return {
        "items": total,
        "exactly_once": sum(sums) == sum(range(total)),
        "batches": sum(batches),
        "seconds": round(seconds, 3),
    }


def tree(args: argparse.Namespace) -> dict[str, Any]:
    total, sizes = 0, []
    began = time.perf_counter()
    with multiprocessing.Pool(args.workers) as pool:
        pool.map(int, range(args.workers))  # the workers are up before the budget starts
        with memory_budget(args.limit_mb, batch_size=args.batch, scope=args.scope) as budget:
            for batch in budget.chunks(range(args.items)):
                shares = [batch[i :: args.workers] for i in range(args.workers)]
                total += sum(
                    pool.starmap(hold, [(share, args.item_kb, args.hold_ms) for share in shares])
                )
                sizes.append(len(batch))
    return {
        "items": args.items,
        "exactly_once": total == sum(range(args.items)) and budget.processed == args.items,
        "batches": len(sizes),
        "max_batch": max(sizes),
        "limit_mb": round(budget.limit_mb, 1),
        "budget_peak_mb": round(budget.peak_mb, 1),
        "seconds": round(time.perf_counter() - began, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["threads", "tasks", "tree"])
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--item-kb", type=int, default=1024)
    parser.add_argument("--limit-mb", type=float, default=300)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--hold-ms", type=float, default=150)
    parser.add_argument("--scope", default="tree")
    parser.add_argument("--passes", type=int, default=0)
    args = parser.parse_args()
    result = tree(args) if args.mode == "tree" else loops(args)
    print(json.dumps({"mode": args.mode, **result}), flush=True)


if __name__ == "__main__":
    main()
