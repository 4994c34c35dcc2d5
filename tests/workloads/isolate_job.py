"""An ingestion with a few items far larger than the worker's cap, run isolated.

``python isolate_job.py calls|chunk auto|rlimit LOG``: 1,500 items of 2 MB each, except items
100, 777 and 1400, which need 600 MB (the cap is 150 MB in a cgroup, 400 MB of data segment
under RLIMIT_DATA). ``calls`` makes one isolated call per item and catches WorkerOutOfMemory;
``chunk`` makes one call with ``chunk=`` over all of them. The workers log each item they
finish. Prints one JSON line: the oversized items and their peaks, the results, this
process's own peak RSS.
"""

from __future__ import annotations

import json
import sys

from isolated import item, item_rlimit, process, process_rlimit

from zerorag_guard import WorkerOutOfMemory

COUNT = 1500
LARGE = {100: 600.0, 777: 600.0, 1400: 600.0}


def own_peak_mb() -> float:
    """This process's peak RSS since its exec (``VmHWM``). Not ``ru_maxrss``: that keeps the
    peak of the process it was forked from (a pytest process of 150 MB) across the exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    mode, cap, log = sys.argv[1], sys.argv[2], sys.argv[3]
    sizes = [LARGE.get(i, 2.0) for i in range(COUNT)]
    oversized: list[list[float]] = []
    results: list[int] = []
    if mode == "calls":
        call = item if cap == "auto" else item_rlimit
        for i, mb in enumerate(sizes):
            try:
                results.append(call(i, mb, log))
            except WorkerOutOfMemory as exc:
                oversized.append([i, exc.peak_mb, exc.limit_mb])
    else:
        call = process if cap == "auto" else process_rlimit
        try:
            results = call(list(range(COUNT)), sizes, log)
        except WorkerOutOfMemory as exc:
            oversized = [[i, mb, exc.limit_mb] for i, mb in exc.oversized]
            results = exc.results
    peak_mb = own_peak_mb()
    print(json.dumps({"oversized": oversized, "results": results, "parent_peak_mb": peak_mb}))


if __name__ == "__main__":
    main()
