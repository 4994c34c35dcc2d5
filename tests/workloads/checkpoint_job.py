"""A checkpointed job for the kill tests: ``python checkpoint_job.py CHECKPOINT LOG N``.

It runs ``memory_budget(checkpoint=CHECKPOINT, key=str).chunks(range(N))`` and appends every
item it processes to LOG, one line each, with a single ``write`` per batch (``O_APPEND``), so a
SIGKILL leaves whole batches in the log: the items a rerun repeats are those of the batches in
flight at the kills. Prints one JSON line when it finishes.
"""

from __future__ import annotations

import json
import os
import sys
import time

from zerorag_guard import memory_budget


def main() -> None:
    path, log, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with memory_budget(2000, checkpoint=path, key=str, batch_size=16) as budget:
        for batch in budget.chunks(range(count)):
            time.sleep(0.0005)  # the batch's work
            os.write(fd, "".join(f"{i}\n" for i in batch).encode())
    print(json.dumps({"skipped": budget.skipped, "first_batch": (budget.batch_sizes or [0])[0]}))


if __name__ == "__main__":
    main()
