"""A batch job whose items each hold a few hundred KB until their batch ends.

Run as a script: ``python batch_job.py fixed|guarded --items N --item-kb K --batch B
[--budget-mb M | --budget-over-base-mb D] [--scope S]``. Prints one JSON line with the peak RSS (the
kernel's high-water mark, kept across the guard's resets), the items processed and the time.
Used by the budget tests and the container (cgroup) system tests.
"""

from __future__ import annotations

import argparse
import json
import time


def process(batch: list[int], item_kb: int) -> list[bytearray]:
    # Each item allocates and touches item_kb of memory that lives until the batch is done,
    # as embeddings and payloads of a batch do before an upsert.
    return [bytearray(b"x" * (item_kb * 1024)) for _ in batch]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["fixed", "guarded"])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--item-kb", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--budget-mb", type=float, default=None)
    parser.add_argument("--budget-over-base-mb", type=float, default=None)
    parser.add_argument("--scope", default="auto")
    args = parser.parse_args()
    start = time.perf_counter()
    seen = 0
    checksum = 0
    if args.mode == "fixed":
        with open("/proc/self/status") as f:
            base_mb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
        for i in range(0, args.items, args.batch):
            batch = list(range(i, min(i + args.batch, args.items)))
            held = process(batch, args.item_kb)
            seen += len(batch)
            checksum += sum(batch)
            del held
        with open("/proc/self/status") as f:
            peak_mb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
        result = {"mode": "fixed", "peak_mb": peak_mb, "base_mb": base_mb}
    else:
        from zerorag_guard import get_monitor, memory_budget

        monitor = get_monitor()
        base_mb = monitor.rss_mb()
        limit = args.budget_mb
        if args.budget_over_base_mb is not None:
            limit = base_mb + args.budget_over_base_mb
        with memory_budget(limit, batch_size=args.batch, scope=args.scope) as budget:
            for batch in budget.chunks(range(args.items)):
                held = process(batch, args.item_kb)
                seen += len(batch)
                checksum += sum(batch)
                del held
        result = {
            "mode": "guarded",
            "peak_mb": monitor.probe.lifetime_peak() / 2**20,
            "budget_peak_mb": budget.peak_mb,
            "limit_mb": budget.limit_mb,
            "base_mb": base_mb,
            "processed": budget.processed,
            "batches": len(budget.batch_sizes),
            "max_batch": max(budget.batch_sizes),
            "cleanups": budget.stats()["cleanups"],
            "group_peak_mb": budget.group_peak_mb,
            "group_peak_source": budget.group_peak_source,
        }
    result.update(
        items=seen,
        checksum_ok=checksum == sum(range(args.items)),
        seconds=round(time.perf_counter() - start, 3),
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
