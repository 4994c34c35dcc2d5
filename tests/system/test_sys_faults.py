"""Faults: whatever fails around the guard (the loop body, a listener, a cache clearer, a
cleanup, Ctrl-C, a fork) must leave the monitor sampling and the resume cursor exact.

Each test runs a guarded ingestion loop over numbered items with the process-wide monitor
sampling every 5 ms, injects its fault, then checks that the sampler thread is alive and its
samples still advance, that ``processed`` is exactly the number of items the loop had finished,
and that resuming from it hands out every remaining item once.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from system_figures import Figures

from zerorag_guard import MemoryMonitor, get_monitor, memory_budget, memory_guarded
from zerorag_guard.budget.budget import current_budget
from zerorag_guard.events import Alert

pytestmark = [pytest.mark.system]

ITEMS = list(range(500))
HERE = Path(__file__).resolve().parent


class Boom(Exception):
    """The injected fault."""


@pytest.fixture
def monitor(socket_home: Path) -> Iterator[MemoryMonitor]:
    """The process-wide monitor, sampling every 5 ms, control socket in a private directory."""
    m = get_monitor()
    m.configure(
        sample_interval=0.005,
        cleanup_cooldown_seconds=0,
        aggressive_cooldown_seconds=0,
        alert_repeat_seconds=0,  # every crossing an alert: the listeners are called each time
    )
    yield m


def assert_sampling(monitor: MemoryMonitor, timeout: float = 5.0) -> int:
    """The sampler thread is alive and takes new samples; returns how many it took meanwhile."""
    assert monitor.running, "the sampler thread died"
    last = monitor.history[-1].time if monitor.history else float("-inf")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [s for s in monitor.history if s.time > last]
        if len(fresh) >= 3:
            return len(fresh)
        time.sleep(0.01)
    raise AssertionError("the sampler took no new samples")


def ingest(
    items: list[int], fail: Callable[[int, list[int]], None], **budget: Any
) -> tuple[list[int], int, BaseException | None]:
    """Run a guarded loop over ``items``; ``fail(batch_no, batch)`` may raise. Returns the items
    the body finished, the budget's resume cursor and what was raised."""
    done: list[int] = []
    raised: BaseException | None = None
    with memory_budget(batch_size=16, **budget) as b:
        try:
            for n, batch in enumerate(b.chunks(items)):
                fail(n, batch)
                done.extend(batch)
        except BaseException as exc:  # KeyboardInterrupt included: that is the point
            raised = exc
    return done, b.processed, raised


def resume(items: list[int], done: list[int], cursor: int) -> list[int]:
    """Finish the job from ``cursor`` in a fresh budget; returns every item processed."""
    assert done == items[:cursor], "the cursor does not match the items the body finished"
    rest, cursor2, raised = ingest(items[cursor:], lambda n, b: None)
    assert raised is None and cursor2 == len(items) - cursor
    return done + rest


def test_exception_in_loop_body(monitor: MemoryMonitor, figures: Figures) -> None:
    faults = 0
    for fail_at in (0, 1, 3, 7):

        def fail(n: int, batch: list[int], at: int = fail_at) -> None:
            if n == at:
                raise Boom(f"batch {n}")

        done, cursor, raised = ingest(ITEMS, fail)
        assert isinstance(raised, Boom)
        faults += 1
        assert cursor == len(done)
        assert resume(ITEMS, done, cursor) == ITEMS
        assert current_budget() is None
    assert_sampling(monitor)
    figures.record("faults", loop_body_exceptions=faults)


def test_exception_in_listener(monitor: MemoryMonitor, figures: Figures) -> None:
    raised = {"n": 0}

    def bad_listener(alert: Alert) -> None:
        raised["n"] += 1
        raise Boom("listener")

    heard: list[str] = []
    monitor.add_listener(bad_listener)
    monitor.add_listener(lambda a: heard.append(a.kind))  # after the bad one: still called
    monitor.alert("medium", "test", "from the test thread")
    rss = monitor.rss_mb()

    def swing(n: int, batch: list[int]) -> None:
        # Thresholds under and back over the current RSS: the sampler enters a level (an
        # alert) and recovers (another), calling the raising listener in its own thread.
        if n % 2 == 0:
            monitor.configure(threshold_mb=rss / 4, critical_threshold_mb=rss * 8)
        else:
            monitor.configure(threshold_mb=rss * 4, critical_threshold_mb=rss * 8)
        time.sleep(0.03)

    # A budget with no ceiling of its own (a ceiling the user set would govern the levels
    # inside it, and the swing would move nothing); under the swung-down thresholds it is
    # over its default ceiling, so it only warns, and its batches stay at 16 (halved to one
    # item, each sleeping 30 ms, the swing took 11 s, and minutes on a loaded machine).
    done, cursor, exc = ingest(ITEMS, swing, on_exceed="warn", min_batch_size=16)
    assert exc is None and cursor == len(ITEMS) and done == ITEMS
    assert raised["n"] >= 3 and "recovered" in heard and heard.count("test") == 1
    assert_sampling(monitor)
    figures.record("faults", listener_exceptions=raised["n"])


def test_exception_in_cache_clearer(monitor: MemoryMonitor, figures: Figures) -> None:
    raised = {"n": 0}
    cleared = {"n": 0}

    def bad_clearer() -> None:
        raised["n"] += 1
        raise Boom("cache clearer")

    monitor.register_cache(bad_clearer)
    monitor.register_cache(lambda: cleared.__setitem__("n", cleared["n"] + 1))
    for strategy in ("standard", "aggressive"):
        result = monitor.cleanup(strategy)
        assert result is not None and result.caches_cleared == 1  # the good one
    monitor.cleanup("standard", wait=False)  # in the cleanup worker's thread
    monitor.wait_for_cleanups(timeout=5)

    def every_batch_cleans(n: int, batch: list[int]) -> None:
        monitor.cleanup("aggressive")

    done, cursor, exc = ingest(ITEMS, every_batch_cleans)
    assert exc is None and done == ITEMS and cursor == len(ITEMS)
    assert raised["n"] >= 3 and cleared["n"] == raised["n"]
    assert monitor.get_health_status()["services"]["cleanup_worker"]
    assert_sampling(monitor)
    figures.record("faults", cache_clearer_exceptions=raised["n"])


def test_exception_in_cleanup(
    monitor: MemoryMonitor, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    """A cleanup that raises (once for each way a cleanup runs): in the sampler thread, in the
    cleanup worker, and between a budget's batches."""
    cleaner = monitor.cleaner
    real_run = cleaner.run
    armed = {"n": 0}
    raised = {"n": 0}
    only_main = {"on": False}

    def flaky_run(strategy: str, trim: Any = None) -> Any:
        in_main = threading.current_thread() is threading.main_thread()
        if armed["n"] > 0 and (in_main or not only_main["on"]):
            armed["n"] -= 1
            raised["n"] += 1
            raise Boom(f"{strategy} cleanup")
        return real_run(strategy, trim)

    monkeypatch.setattr(cleaner, "run", flaky_run)
    rss = monitor.rss_mb()

    # 1. In the sampler: CRITICAL runs an aggressive cleanup in the sampler thread.
    armed["n"] = 1
    monitor.configure(threshold_mb=rss / 8, critical_threshold_mb=rss / 4)
    deadline = time.monotonic() + 5
    while armed["n"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert armed["n"] == 0, "the sampler never ran the cleanup"
    assert_sampling(monitor)
    monitor.configure(threshold_mb=rss * 4, critical_threshold_mb=rss * 8)

    # 2. In the cleanup worker.
    armed["n"] = 1
    monitor.cleanup("standard", wait=False)
    monitor.wait_for_cleanups(timeout=5)
    assert armed["n"] == 0
    monitor.cleanup("standard", wait=False)  # the worker still serves the next one
    monitor.wait_for_cleanups(timeout=5)
    assert monitor.get_health_status()["services"]["cleanup_worker"]

    # 3. Between batches: a budget under HIGH asks for a standard cleanup before each batch
    # (the fault is kept for the loop's thread: the sampler queues standard cleanups too).
    armed["n"], only_main["on"] = 1, True
    monitor.configure(threshold_mb=rss / 4, critical_threshold_mb=rss * 8, gc_time_budget=1.0)
    done, cursor, exc = ingest(ITEMS, lambda n, b: None, limit_mb=rss + 500)
    monitor.configure(threshold_mb=rss * 4, critical_threshold_mb=rss * 8)
    assert armed["n"] == 0
    # A cleanup that fails never stops a job: the loop goes on, no item lost or repeated.
    assert exc is None, exc
    assert done == ITEMS
    assert cursor == len(done)
    assert resume(ITEMS, done, cursor) == ITEMS
    assert current_budget() is None
    assert_sampling(monitor)
    figures.record(
        "faults",
        cleanup_exceptions=raised["n"],
        cleanup_exception_stops_budget_loop=exc is not None,
    )


def test_keyboard_interrupt_inside_budget(monitor: MemoryMonitor, figures: Figures) -> None:
    interrupts = 0

    @memory_guarded(name="step")
    def step(batch: list[int], interrupt: bool) -> None:
        with memory_budget(increase_mb=100):  # nested: the inner budget is active here
            if interrupt:
                raise KeyboardInterrupt

    for fail_at in (0, 2, 5):

        def fail(n: int, batch: list[int], at: int = fail_at) -> None:
            step(batch, n == at)

        outer = memory_budget(limit_mb=monitor.rss_mb() + 500)
        with pytest.raises(KeyboardInterrupt), outer:
            done, cursor, raised = ingest(ITEMS, fail)
            assert isinstance(raised, KeyboardInterrupt)
            raise raised
        interrupts += 1
        assert current_budget() is None, "a budget stayed active after KeyboardInterrupt"
        assert cursor == len(done) < len(ITEMS)
        assert resume(ITEMS, done, cursor) == ITEMS
        assert_sampling(monitor)
    # A new budget after all that works as a fresh one.
    with memory_budget(increase_mb=50) as b:
        got = [x for batch in b.chunks(range(100)) for x in batch]
    assert got == list(range(100)) and b.processed == 100 and current_budget() is None
    figures.record("faults", keyboard_interrupts=interrupts)


@pytest.mark.slow
def test_keyboard_interrupt_at_random_points(socket_home: Path, figures: Figures) -> None:
    """SIGINT at random moments of a guarded loop (in the guard's own code as often as not):
    after each, no budget is left active, the sampler runs and a new budget works."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "interrupt_job.py"), "--trials", "150"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    figures.record(
        "faults",
        sigint_trials=report["trials"],
        sigint_interrupted=report["interrupted_in_loop"],
        sigint_inconsistent=len(report["problems"]),
    )
    # Counted only where the signal landed before the guarded loop ended (a trial that finished
    # first is interrupted in its wait, which tests nothing): measured 150 of 150, and 149-150
    # of those inside zerorag_guard's own frames.
    assert report["interrupted_in_loop"] >= report["trials"] // 2, report
    assert report["interrupted_in_guard_code"] >= report["trials"] // 4, report
    assert report["problems"] == []


def _child(queue: Any, parent_mb: float) -> None:
    """In the child: the guard must be its own (its sampler, its RSS, a working budget). It
    allocates enough to stand 80 MB above both its start and the parent (``parent_mb``), so its
    own RSS cannot be mistaken for the parent's, whatever the parent holds."""
    out: dict[str, Any] = {"pid": os.getpid()}
    try:
        m = get_monitor()
        m.configure(sample_interval=0.005)
        out["running"] = m.running
        before = m.rss_mb()
        size_mb = 80 + max(0.0, parent_mb - before)
        blob = b"x" * int(size_mb * 1024 * 1024)  # memory that only the child has
        deadline = time.monotonic() + 10
        seen = 0.0
        while time.monotonic() < deadline:
            seen = m.history[-1].rss_mb if m.history else 0.0
            if seen >= before + size_mb - 10:
                break
            time.sleep(0.01)
        out["rss_before_mb"], out["sampled_mb"] = before, seen
        with open("/proc/self/statm") as f:
            out["statm_mb"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        del blob
        with memory_budget(increase_mb=50) as b:
            got = [x for batch in b.chunks(range(200)) for x in batch]
        out["budget_ok"] = got == list(range(200)) and b.processed == 200
        out["health_pid"] = m.get_health_status().get("pid")
        m.stop()  # also removes the child's control socket
    except BaseException as exc:
        out["error"] = repr(exc)
    queue.put(out)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_child_process_gets_a_working_guard(
    method: str, monitor: MemoryMonitor, figures: Figures
) -> None:
    ctx: Any = multiprocessing.get_context(method)
    parent_rss = monitor.rss_mb()
    results: list[dict[str, Any]] = []

    def fork_mid_run(n: int, batch: list[int]) -> None:
        if n == 3:  # mid-run: inside the budget, between batches
            queue = ctx.Queue()
            child = ctx.Process(target=_child, args=(queue, parent_rss))
            child.start()
            try:
                results.append(queue.get(timeout=60))
            finally:
                child.join(timeout=30)
                if child.is_alive():
                    child.kill()
            results[-1]["exitcode"] = child.exitcode

    done, cursor, exc = ingest(ITEMS, fork_mid_run)
    assert exc is None and done == ITEMS and cursor == len(ITEMS)
    assert_sampling(monitor)
    (child,) = results
    print(method, child)
    assert "error" not in child, child
    assert child["exitcode"] == 0 and child["pid"] != os.getpid()
    assert child["running"], "the child's sampler is not running"
    assert child["sampled_mb"] >= child["rss_before_mb"] + 70, "the child's sampler is not live"
    # What it sampled is the child's own RSS (its statm), not the parent's.
    assert abs(child["sampled_mb"] - child["statm_mb"]) < 20, child
    assert abs(child["sampled_mb"] - parent_rss) > 20, (child, parent_rss)
    assert child["budget_ok"] and child["health_pid"] == child["pid"]
    figures.record(
        "faults",
        **{
            f"{method}_child_sampler": child["running"],
            f"{method}_child_sampled_mb": round(child["sampled_mb"], 1),
            f"{method}_parent_rss_mb": round(parent_rss, 1),
        },
    )
