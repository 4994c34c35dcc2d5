"""The soak workload: a guarded ingestion loop for SECONDS with everything of the guard active.

Run as ``python soak_job.py --seconds S [--warmup W]``. The monitor samples every 20 ms; its
thresholds are set just above the loop's own baseline, so batches cross them and the sampler
raises alerts (two listeners count them) and runs light, standard (queued) and aggressive
cleanups; standard and aggressive cleanups are also forced on a timer; a registered
``lru_cache`` fills between cleanups; the control socket is open (the test talks to it).

After the warm-up, RSS is read after every round (at the same point of the loop: the round's
batches are gone) and, with file descriptors and threads, compared with the end. Prints one JSON
line of figures, then waits for its standard input to close, so the control socket stays up
until the test has finished talking to it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import gc
import json
import logging
import os
import sys
import threading
import time
from typing import Any

from zerorag_guard import Alert, get_monitor, memory_budget, memory_guarded
from zerorag_guard.control.server import current_server
from zerorag_guard.memory.probes import MB

ITEM_KB = 64
ITEMS_PER_ROUND = 400
STANDARD_EVERY = 3.0
AGGRESSIVE_EVERY = 2.0
#: Seconds between two RSS readings at a round's end (a reading every round would itself be a
#: growing list, ~200 bytes a round).
POINT_EVERY = 0.5


def fd_count() -> int:
    """Open file descriptors now; the least of a few reads, as a control-socket connection
    being served holds one for a moment."""
    counts = []
    for _ in range(5):
        counts.append(len(os.listdir("/proc/self/fd")))
        time.sleep(0.02)
    return min(counts)


def lasting_threads() -> list[str]:
    """The names of the threads alive in each of ten reads over 0.2 s, sorted: a thread that
    serves one control-socket connection lives for a request and is not among them."""
    names: set[str] = set()
    for i in range(10):
        now = {t.name for t in threading.enumerate()}
        names = now if i == 0 else names & now
        time.sleep(0.02)
    return sorted(names)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


def _load_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


#: Called before each RSS reading: glibc keeps the freed top of the heap mapped or returns it
#: depending on where the last batch's blocks fell, which flips a reading between two levels
#: ~4 MB apart; after ``malloc_trim(0)`` a reading is what the process holds.
malloc_trim = _load_malloc_trim()


@functools.cache
def lookup(key: int) -> bytes:
    """A cache the loop fills and the cleanups clear (registered with the monitor)."""
    return bytes(1024) + key.to_bytes(4, "little")


@memory_guarded(name="embed")
def embed(batch: list[int]) -> list[bytes]:
    # Each item holds ITEM_KB until its batch ends, as embeddings do before an upsert.
    return [lookup(i % 2048) + b"x" * (ITEM_KB * 1024) for i in batch]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--points", default=None, help="write the (seconds, MB) points here")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else min(20.0, args.seconds / 4)

    # The alerts are counted by the listeners; keep the log (one line per alert) out of stderr.
    logging.getLogger("zerorag_guard").addHandler(logging.NullHandler())
    monitor = get_monitor()
    monitor.configure(
        sample_interval=0.02,
        history_size=500,
        alert_history_size=50,
        operation_history_size=200,
        cleanup_cooldown_seconds=0.5,
        aggressive_cooldown_seconds=2.0,
        gc_interval_seconds=2.0,
        gc_time_budget=0.5,
        alert_repeat_seconds=0,  # every alert raised: the listeners and the log work all the time
    )
    monitor.register_cache(lookup)
    seen: dict[str, int] = {}
    counted = {"alerts": 0}

    def count(alert: Alert) -> None:
        seen[alert.kind] = seen.get(alert.kind, 0) + 1

    def tally(alert: Alert) -> None:
        counted["alerts"] += 1

    monitor.add_listener(count)
    monitor.add_listener(tally)

    # Calibrate: the loop's baseline, then thresholds just above it so every round crosses them.
    round_mb = 0.0
    fed = done = rounds = 0

    def run_round(ceiling_mb: float | None) -> None:
        nonlocal fed, done, rounds, round_mb
        total = 0
        with memory_budget(ceiling_mb, batch_size=300, name="soak") as budget:
            for batch in budget.chunks(range(ITEMS_PER_ROUND)):
                out = embed(batch)
                total += len(out)
                del out
        if budget.processed != ITEMS_PER_ROUND or total != ITEMS_PER_ROUND:
            raise AssertionError(f"round lost items: {budget.processed} of {ITEMS_PER_ROUND}")
        fed += ITEMS_PER_ROUND
        done += budget.processed
        rounds += 1
        round_mb = max(round_mb, budget.peak_mb)

    for _ in range(3):
        run_round(None)
    monitor.cleanup("aggressive")
    base = monitor.rss_mb()
    # The main threshold at base + 15 MB is the rounds' budget ceiling (a budget given no limit:
    # one the user set would govern the levels inside it), and the preventive one is at base +
    # 5 MB, left below 99% of it: every round (about base + 10 MB) enters PREVENTIVE, and
    # memory falls back to base between rounds.
    monitor.configure(
        threshold_mb=base + 15,
        critical_threshold_mb=base + 60,
        preventive_ratio=(base + 5) / (base + 15),
        hysteresis_ratio=0.01,
    )
    ceiling = None

    start = time.monotonic()
    last_standard = last_aggressive = start
    rss_points: list[tuple[float, float]] = []
    blocks: list[tuple[float, float]] = []
    raw_points: list[tuple[float, float]] = []
    kept_points: list[tuple[float, float]] = []
    last_point = start
    fds_start = 0
    names_start: list[str] = []
    warm = False
    while (now := time.monotonic()) - start < args.seconds:
        run_round(ceiling)
        if now - last_standard >= STANDARD_EVERY:
            monitor.cleanup("standard", wait=False)
            last_standard = now
        if now - last_aggressive >= AGGRESSIVE_EVERY:
            result = monitor.cleanup("aggressive")
            last_aggressive = now
            if warm and result is not None:
                # What survives an aggressive cleanup (GC, caches, malloc_trim) is what is kept.
                kept_points.append((now - start, result.rss_after / MB))
        if not warm and now - start >= warmup:
            warm = True
            fds_start, names_start = fd_count(), lasting_threads()
        if warm and now - last_point >= POINT_EVERY:
            last_point = now
            raw_points.append((now - start, monitor.rss_mb()))
            if malloc_trim is not None:
                malloc_trim(0)
            rss_points.append((now - start, monitor.rss_mb()))
            blocks.append((now - start, float(sys.getallocatedblocks())))

    gc.collect()
    fds_end, names_end = fd_count(), lasting_threads()
    health = monitor.get_health_status()
    cfg = monitor.config
    server = current_server()
    values = [v for _, v in rss_points]
    figures: dict[str, Any] = {
        "seconds": round(time.monotonic() - start, 1),
        "warmup_seconds": warmup,
        "rounds": rounds,
        "items_fed": fed,
        "items_processed": done,
        "items_lost": fed - done,
        "base_mb": round(base, 1),
        "round_peak_mb": round(round_mb, 1),
        "rss_points": len(rss_points),
        "rss_first_mb": round(values[0], 1) if values else None,
        "rss_last_mb": round(values[-1], 1) if values else None,
        "rss_min_mb": round(min(values), 1) if values else None,
        "rss_max_mb": round(max(values), 1) if values else None,
        "slope_mb_per_min": round(slope_per_minute(rss_points), 3),
        "rss_trimmed_before_reading": malloc_trim is not None,
        "untrimmed_slope_mb_per_min": round(slope_per_minute(raw_points), 3),
        "kept_points": len(kept_points),
        "kept_first_mb": round(kept_points[0][1], 1) if kept_points else None,
        "kept_last_mb": round(kept_points[-1][1], 1) if kept_points else None,
        "kept_slope_mb_per_min": round(slope_per_minute(kept_points), 3),
        "blocks_first": int(blocks[0][1]) if blocks else None,
        "blocks_last": int(blocks[-1][1]) if blocks else None,
        "blocks_slope_per_min": round(slope_per_minute(blocks), 1),
        "fds_after_warmup": fds_start,
        "fds_end": fds_end,
        "threads_after_warmup": len(names_start),
        "threads_end": len(names_end),
        "thread_names_after_warmup": names_start,
        "thread_names_end": names_end,
        "history_len": len(monitor.history),
        "history_size": cfg.history_size,
        "alerts_len": len(monitor.alerts),
        "alert_history_size": cfg.alert_history_size,
        "operations_len": len(monitor.operation_history),
        "operation_history_size": cfg.operation_history_size,
        "alerts_heard": counted["alerts"],
        "alerts_by_kind": seen,
        "cleanups": health["cleanups"],
        "sampler_alive": monitor.running,
        "samples_taken_lifetime": len(monitor.history),
        "control_served": server.requests.served if server is not None else None,
        "control_errors": server.errors if server is not None else None,
        "health_issues": health["health_issues"],
        "cache_entries_end": lookup.cache_info().currsize,
    }
    if args.points:
        with open(args.points, "w") as f:
            json.dump(
                {"rss": rss_points, "raw": raw_points, "blocks": blocks, "kept": kept_points}, f
            )
    print(json.dumps(figures, default=str), flush=True)
    sys.stdin.read()  # until the test closes our input


if __name__ == "__main__":
    main()
