"""A checkpointed job killed with SIGKILL again and again, then allowed to finish.

The kills are real: some at random moments, some the instant the checkpoint's temporary file
appears (a kill during the write, before its rename). What must hold: every item is done; an
item done twice lies in a batch the checkpoint had in flight at a kill; the checkpoint reads
back after every kill; and a rerun after a kill starts at half the batch in flight.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zerorag_guard.budget.checkpoint import read_checkpoint

JOB = Path(__file__).parent.parent / "workloads" / "checkpoint_job.py"
ITEMS = 4000
KILLS = 24

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and /proc: Linux")


def _start(path: Path, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(JOB), str(path), str(log), str(ITEMS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_work(proc: subprocess.Popen[str], log: Path, size: int) -> bool:
    """Until the run has written a batch of its own (its imports are done)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.stat().st_size > size:
            return True
        time.sleep(0.001)
    return False


def test_a_job_killed_again_and_again_finishes_with_every_item_and_repeats_only_in_flight(
    tmp_path: Path,
) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    path, log = tmp_path / "job.json", tmp_path / "done.log"
    tmp = Path(str(path) + ".tmp")
    in_flight: list[tuple[int, int]] = []  # (start, size) at each kill
    kills = during_write = 0
    while kills < KILLS:
        proc = _start(path, log)
        if not _wait_for_work(proc, log, log.stat().st_size if log.exists() else 0):
            break  # finished before a kill: the job is done
        if kills % 2:  # the instant a checkpoint write begins
            while not tmp.exists() and proc.poll() is None:
                pass
        else:
            time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if proc.returncode != -signal.SIGKILL:
            break  # it finished first
        kills += 1
        during_write += tmp.exists()
        state = read_checkpoint(str(path))  # never corrupt: raises if it were
        flight = state["in_flight"]
        if flight is not None:
            in_flight.append((flight["start"], flight["size"]))
            expected_first = max(1, flight["size"] // 2)
        else:
            expected_first = None
    final = _start(path, log)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    report = json.loads(out)
    if expected_first is not None:
        assert report["first_batch"] == min(expected_first, 16)
    counts = collections.Counter(int(line) for line in log.read_text().split())
    assert sorted(counts) == list(range(ITEMS)), f"seed {seed}: items missing"
    for item, n in counts.items():
        covering = sum(start <= item < start + size for start, size in in_flight)
        assert n <= 1 + covering, f"seed {seed}: item {item} done {n} times, in flight {covering}"
    assert kills >= 20, f"only {kills} kills landed before the job finished (seed {seed})"
    assert during_write >= 1, f"no kill landed inside a checkpoint write (seed {seed})"
    assert read_checkpoint(str(path))["complete"]
    repeats = sum(n - 1 for n in counts.values())
    print(f"kills {kills}, during a write {during_write}, repeats {repeats}, in flight {in_flight}")
    rerun = _start(path, log)  # a finished job does nothing
    rerun.communicate(timeout=60)
    assert rerun.returncode == 0
    assert sum(1 for _ in log.read_text().split()) == sum(counts.values())
    os.unlink(log)


def test_a_guarded_chroma_upsert_killed_and_rerun_ends_with_exactly_the_items(
    tmp_path: Path,
) -> None:
    pytest.importorskip("chromadb")
    job = Path(__file__).parent.parent / "workloads" / "store_checkpoint_job.py"
    count, checkpoint = 2000, tmp_path / "write.json"
    command = [sys.executable, str(job), str(tmp_path), str(count)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None and done < 400:
        try:
            done = read_checkpoint(str(checkpoint))["done"]
        except Exception:  # not written yet
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the upsert finished before the kill"
    killed_at = read_checkpoint(str(checkpoint))
    assert 0 < killed_at["done"] < count
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report == {"count": count, "skipped": killed_at["done"]}
    import chromadb

    client = chromadb.PersistentClient(
        path=str(tmp_path / "chroma"),
        settings=chromadb.config.Settings(anonymized_telemetry=False),
    )
    stored = client.get_collection("kills").get(include=["documents"])
    assert sorted(stored["ids"]) == sorted(f"id-{i}" for i in range(count))
    assert all(doc == f"document {i[3:]}" for i, doc in zip(stored["ids"], stored["documents"]))
