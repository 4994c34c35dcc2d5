"""Checkpoints: what a rerun skips, how it starts, and what it refuses (exact, no kills here;
``test_checkpoint_kills.py`` kills real processes)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from budget_helpers import Steady, monitor_with

from zerorag_guard import CheckpointError, memory_budget
from zerorag_guard.budget.checkpoint import Checkpoint, read_checkpoint


def run(path: Path, items: Any, stop_after: int = -1, **kw: Any) -> tuple[list[Any], Any]:
    """Run a checkpointed loop over ``items``, raising once ``stop_after`` items are done."""
    monitor = monitor_with(Steady(100))
    seen: list[Any] = []
    budget = memory_budget(500, checkpoint=str(path), monitor=monitor, batch_size=8, **kw)
    try:
        with budget as active:
            for batch in active.chunks(items):
                if 0 <= stop_after <= active.processed:
                    raise RuntimeError("stop")
                seen.extend(batch)
    except RuntimeError:
        pass
    return seen, active


def test_a_rerun_skips_what_was_done_and_a_finished_job_does_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "job.json"
    first, b1 = run(path, range(100), stop_after=30)
    state = read_checkpoint(str(path))
    assert state["done"] == b1.processed == len(first) == 31  # batches 1, 2, 4, 8, 8, 8
    assert state["in_flight"] is None and state["interrupted"]["start"] == 31
    second, b2 = run(path, range(100))
    assert first + second == list(range(100))  # each item once, in order
    assert b2.skipped == 31 and b2.processed == 100 and b2.stats()["skipped"] == 31
    assert b2.batch_sizes[0] == 1  # an exception is no kill: slow start as usual
    done = read_checkpoint(str(path))
    assert done["complete"] and done["done"] == 100 and done["runs"] == 2
    with caplog.at_level(logging.WARNING, "zerorag_guard"):
        third, b3 = run(path, range(100))
    assert third == [] and b3.processed == 100 and b3.batch_sizes == []
    assert "completed" in caplog.text and "nothing to do" in caplog.text
    again, _ = run(path, range(100), reset_checkpoint=True)
    assert again == list(range(100))


def test_a_kill_mid_batch_restarts_at_half_the_batch_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    run(path, range(100), stop_after=30)
    state = read_checkpoint(str(path))
    # What a SIGKILL leaves: the batch handed out, never completed, never closed.
    state["in_flight"] = {"start": 31, "size": 40, "since": "x", "pid": 1, "first_key": None}
    path.write_text(json.dumps(state))
    rest, budget = run(path, range(100))
    assert rest == list(range(31, 100))
    assert budget.batch_sizes[0] == 8  # half of 40, within batch_size=8
    run(path, range(100), reset_checkpoint=True, stop_after=30)
    state = read_checkpoint(str(path))
    state["in_flight"] = {"start": 31, "size": 6, "since": "x", "pid": 1, "first_key": None}
    path.write_text(json.dumps(state))
    _, budget = run(path, range(100))
    assert budget.batch_sizes[:2] == [3, 6]


def test_key_checks_the_input_at_the_cursor(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    items = [f"doc-{i}" for i in range(50)]
    run(path, items, stop_after=10, key=str)
    assert read_checkpoint(str(path))["last_key"] == "doc-14"
    with pytest.raises(CheckpointError) as info:
        run(path, ["new", *items], key=str)
    assert str(path) in str(info.value) and "'doc-13'" in str(info.value)
    # Killed with a batch in flight: the first item after the cursor is checked too.
    state = read_checkpoint(str(path))
    state["in_flight"] = {"start": 15, "size": 8, "since": "x", "pid": 1, "first_key": "doc-15"}
    path.write_text(json.dumps(state))
    changed = [*items[:15], "other", *items[16:]]
    with pytest.raises(CheckpointError, match="the first after the cursor"):
        run(path, changed, key=str)
    with pytest.raises(CheckpointError, match="fewer items than the 15"):
        run(path, items[:12], key=str)
    rest, _ = run(path, items, key=str)
    assert rest == items[15:]
    with pytest.raises(CheckpointError, match="expected a string or a number"):
        run(tmp_path / "other.json", items, key=lambda item: [item])


@pytest.mark.parametrize(
    "content",
    ["", '{"format": "zerorag_guard.checkpoint/1", "loop": 1, "do', "garbage\x00\x01", "[1, 2]"],
    ids=["empty", "truncated", "garbage", "not-an-object"],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "job.json"
    path.write_text(content)
    with pytest.raises(CheckpointError) as info:
        run(path, range(10))
    assert str(path) in str(info.value) and "reset_checkpoint=True" in str(info.value)
    assert path.read_text() == content  # refused, not overwritten
    seen, _ = run(path, range(10), reset_checkpoint=True)
    assert seen == list(range(10))


def test_one_run_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    holder = Checkpoint(str(path))
    holder.open()
    try:
        with pytest.raises(CheckpointError, match=f"in use by another run \\(pid {os.getpid()}"):
            run(path, range(10))
    finally:
        holder.close(complete=False)
    assert run(path, range(10))[0] == list(range(10))


def test_each_loop_of_a_block_resumes_on_its_own(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    monitor = monitor_with(Steady(100))
    names = ("parse", "embed", "store")

    def job(fail_at: int) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        try:
            with memory_budget(500, checkpoint=str(path), monitor=monitor, batch_size=4) as b:
                for name in names:
                    for batch in b.chunks(range(20)):
                        if len(out) >= fail_at:
                            raise RuntimeError("stop")
                        out.extend((name, i) for i in batch)
        except RuntimeError:
            pass
        return out

    runs = [job(27), job(9), job(10_000)]  # dies in "embed", then in "store", then finishes
    assert all(runs) and sum(map(len, runs)) == 60
    assert [x for r in runs for x in r] == [(n, i) for n in names for i in range(20)]
    state = read_checkpoint(str(path))
    assert state["complete"] and state["loops_done"] == [20, 20, 20] and state["runs"] == 3


def test_async_loops_resume_too(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    monitor = monitor_with(Steady(100))

    async def source() -> Any:
        for i in range(40):
            yield i

    async def job(stop: int) -> list[int]:
        seen: list[int] = []
        try:
            async with memory_budget(500, checkpoint=path, monitor=monitor, batch_size=8) as b:
                async for batch in b.achunks(source()):
                    if b.processed >= stop:
                        raise RuntimeError("stop")
                    seen.extend(batch)
        except RuntimeError:
            pass
        return seen

    first = asyncio.run(job(10))
    second = asyncio.run(job(10_000))
    assert first + second == list(range(40))


def test_a_store_session_numbers_its_writes(tmp_path: Path) -> None:
    """guard_store's checkpoint: the n-th write of a rerun resumes the n-th write of the run
    before; a write that run finished is skipped whole."""
    path = tmp_path / "store.json"
    monitor = monitor_with(Steady(100))

    def writes(session: Checkpoint, stop: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for number in (1, 2):
            with memory_budget(500, checkpoint=session, monitor=monitor, batch_size=4) as b:
                for batch in b.chunks(range(12)):
                    if len(out) >= stop:
                        return out
                    out.extend((number, i) for i in batch)
        return out

    first = writes(Checkpoint(str(path)), stop=15)
    assert first[-1] == (2, 2)  # write 1 whole, write 2 up to item 2
    second = writes(Checkpoint(str(path)), stop=10_000)
    assert first + second == [(n, i) for n in (1, 2) for i in range(12)]
    assert not read_checkpoint(str(path))["complete"]  # a store's writes never end the job


def test_bad_arguments_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key= and reset_checkpoint= need checkpoint=PATH"):
        memory_budget(key=str)
    with pytest.raises(ValueError, match="expected a file path"):
        memory_budget(checkpoint="")
    with pytest.raises(ValueError, match="expected a function of an item"):
        memory_budget(checkpoint=str(tmp_path / "x"), key="id")  # type: ignore[arg-type]


def test_the_command_shows_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    run(path, range(100), stop_after=30)
    state = read_checkpoint(str(path))
    state["in_flight"] = {"start": 31, "size": 16, "since": "2026-12-04T01:00:00+00:00", "pid": 9}
    path.write_text(json.dumps(state))
    command = [sys.executable, "-m", "zerorag_guard", "checkpoint"]
    text = subprocess.run([*command, str(path)], capture_output=True, text=True, check=True)
    assert "31 items done" in text.stdout and "16 items in flight" in text.stdout
    data = json.loads(
        subprocess.run(
            [*command, str(path), "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert data["done"] == 31 and data["in_flight"]["size"] == 16
    (tmp_path / "bad.json").write_text("{")
    bad = subprocess.run([*command, str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert bad.returncode == 1 and "bad.json" in bad.stderr and "Traceback" not in bad.stderr
