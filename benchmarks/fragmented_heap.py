"""A fragmented heap of cyclic garbage, then one cleanup; prints what it gave back to the OS.

Run as a script: ``python fragmented_heap.py gc|aggressive [--count N]``. ``COUNT`` objects of
2 KB are allocated, each held in a reference cycle (so only the cycle collector frees them), and
every 256th survives: one survivor every 512 KB pins the heap, so glibc can neither move the free
space to the top nor unmap it. ``gc`` runs ``gc.collect()`` alone; ``aggressive`` runs the
monitor's aggressive cleanup (full GC passes, caches, ``malloc_trim(0)``). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from zerorag_guard.memory.probes import MB, MemoryProbe

SIZE, KEEP_EVERY = 2000, 256


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("strategy", choices=["gc", "aggressive"])
    parser.add_argument("--count", type=int, default=150_000)
    args = parser.parse_args()
    probe = MemoryProbe(use_kernel_peak=False)
    gc.collect()
    gc.disable()  # the garbage must wait for the cleanup under test
    survivors = []
    for i in range(args.count):
        payload = bytes([i % 251]) * SIZE
        if i % KEEP_EVERY == 0:
            survivors.append(payload)
        else:
            node: list[object] = [payload]
            node.append(node)  # a cycle: refcounting alone never frees it
    before = probe.rss_bytes()
    start = time.perf_counter()
    if args.strategy == "gc":
        gc.collect()
    else:
        from zerorag_guard import get_monitor

        get_monitor().cleanup("aggressive")
    seconds = time.perf_counter() - start
    after = probe.rss_bytes()
    print(
        json.dumps(
            {
                "strategy": args.strategy,
                "heap_mb": round(before / MB, 1),
                "after_mb": round(after / MB, 1),
                "reclaimed_mb": round((before - after) / MB, 1),
                "cleanup_seconds": round(seconds, 4),
                "survivors": len(survivors),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
