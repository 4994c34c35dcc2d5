"""SIGINT at random moments of a guarded loop: the guard must stay consistent after each.

Run as ``python interrupt_job.py --trials N``. Each trial arms a timer that sends this process
SIGINT after a random delay of 0 to 20 ms, then runs nested budgets and guarded calls over
numbered items; the ``KeyboardInterrupt`` lands wherever the main thread is, in the job's code
or in the guard's. After each trial: no budget may be left active, the sampler must run and a
new budget must process every item. Prints one JSON line: trials, interrupted (anywhere),
interrupted_in_loop (before the guarded loop ended), interrupted_in_guard_code (of those, in a
frame of zerorag_guard's), problems.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
import traceback
from pathlib import Path

from zerorag_guard import get_monitor, memory_budget, memory_guarded
from zerorag_guard.budget import budget as budget_module
from zerorag_guard.budget.budget import current_budget


@memory_guarded(name="work")
def work(batch: list[int]) -> int:
    with memory_budget(increase_mb=200, batch_size=4) as inner:
        return sum(len(b) for b in inner.chunks(batch))


#: Set when a trial's guarded loop has run to its end (the signal then lands in the wait after it).
FINISHED = threading.Event()


def trial() -> None:
    """One guarded loop until the signal lands (in the loop, or in the wait after it)."""
    FINISHED.clear()
    done = 0
    with memory_budget(limit_mb=get_monitor().rss_mb() + 500, batch_size=8) as b:
        for batch in b.chunks(range(10_000)):
            done += work(batch)
    FINISHED.set()
    time.sleep(1.0)  # finished first: wait for the signal here instead


def where(exc: BaseException) -> str:
    """The innermost frames of the guard's own code that the interrupt went through."""
    frames = [
        f"{Path(f.filename).name}:{f.lineno} {f.name}"
        for f in traceback.extract_tb(exc.__traceback__)
        if "zerorag_guard" in f.filename
    ]
    return " < ".join(reversed(frames[-3:])) or "the job's own code"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    # A process started in the background by a shell without job control (`make test &`, nohup)
    # inherits SIGINT ignored, and Python then leaves it so: every signal would be lost and
    # every trial would wait out its second.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(args.seed)
    monitor = get_monitor()
    monitor.configure(sample_interval=0.005)
    problems: list[str] = []
    interrupted = in_loop = in_guard = 0
    landed = ""
    for n in range(args.trials):
        timer = threading.Timer(rng.uniform(0.0, 0.02), os.kill, (os.getpid(), signal.SIGINT))
        try:
            timer.start()
            trial()
        except KeyboardInterrupt as exc:
            interrupted += 1
            landed = where(exc)
            if not FINISHED.is_set():
                in_loop += 1
                in_guard += landed != "the job's own code"
        timer.join()
        if current_budget() is not None:
            problems.append(f"trial {n}: a budget stayed active (interrupted at {landed})")
            budget_module._active.set(None)  # start the next trial clean
        if not monitor.running:
            problems.append(f"trial {n}: the sampler stopped")
        with memory_budget(increase_mb=100) as fresh:
            got = [x for batch in fresh.chunks(range(50)) for x in batch]
        if got != list(range(50)) or fresh.processed != 50:
            problems.append(f"trial {n}: a new budget processed {fresh.processed} of 50")
    # A few short trials may end before the sampler's first round: then any sample is new.
    last = monitor.history[-1].time if monitor.history else float("-inf")
    time.sleep(0.1)
    if not monitor.history or monitor.history[-1].time <= last:
        problems.append("the sampler takes no new samples")
    report = {
        "trials": args.trials,
        "interrupted": interrupted,
        "interrupted_in_loop": in_loop,
        "interrupted_in_guard_code": in_guard,
        "problems": problems,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
