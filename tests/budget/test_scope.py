"""Scopes and shared headroom, on injected readings: what each scope counts, the tighter of two
ceilings governing, MemAvailable bounding a host budget, loops that share one headroom each
planning on their share, turns that end, and reservations that end with their loop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from budget_helpers import ItemCost, monitor_with
from fake_trees import v2_tree
from group_helpers import FakeGroup, busy_v2_group

from zerorag_guard import memory_budget, memory_guarded
from zerorag_guard.budget.scope import HOST_RESERVE, MAX_POLLS
from zerorag_guard.integrations.vectorstores import guard_store
from zerorag_guard.memory.group import GroupReader
from zerorag_guard.memory.ledger import RECORD, Ledger, _start_time
from zerorag_guard.memory.limits import EffectiveLimit, Limit
from zerorag_guard.memory.probes import MB

CGROUP_1000 = EffectiveLimit(
    1000 * MB, "cgroup v2", "/job/memory.max", (Limit(1000 * MB, "cgroup v2", "/job"),)
)
HOST_64G = EffectiveLimit(64 * 1024 * MB, "host", "physical memory")


def run(budget: object, reader: ItemCost, n: int = 3000) -> list[int]:
    """Drive ``budget.chunks`` over ``n`` items that each cost ``reader.cost`` until batch end;
    returns the items handed out."""
    handed: list[int] = []
    for batch in budget.chunks(range(n)):  # type: ignore[attr-defined]
        handed.extend(batch)
        reader.peak(budget.monitor.probe, len(batch))  # type: ignore[attr-defined]
    return handed


# -- arguments ------------------------------------------------------------------------------------
def test_an_unknown_scope_is_refused_naming_it_and_the_choices() -> None:
    expected = r"scope='node' is not valid: expected one of 'auto', 'process', 'tree', 'cgroup'"
    with pytest.raises(ValueError, match=expected):
        memory_budget(scope="node")
    with pytest.raises(ValueError, match=expected):
        memory_guarded(scope="node")(lambda: None)
    with pytest.raises(ValueError, match=expected):
        guard_store(object(), scope="node")  # checked before the store is


# -- auto: the tighter of the budget's ceiling and 90% of the cgroup's limit --------------------
@pytest.mark.parametrize(
    ("scope", "working_set_mb", "largest"),
    [
        # Others in the cgroup use 450 MB: 900 - 550 = 350 MB free, 80% of it at 2 MB an item.
        ("auto", 550, 140),
        ("cgroup", 550, 140),
        # The cgroup is nearly empty: this process's own ceiling (900 - 100) governs, capped at 300.
        ("auto", 100, 300),
        # scope="process" never looks at the cgroup.
        ("process", 550, 300),
    ],
)
def test_the_cgroups_working_set_and_the_process_ceiling_both_hold(
    scope: str, working_set_mb: float, largest: int
) -> None:
    reader, group = ItemCost(base_mb=100, cost_mb=2), FakeGroup()
    group.working_set_mb = working_set_mb
    monitor = monitor_with(reader, CGROUP_1000, group)
    with memory_budget(batch_size=300, monitor=monitor, scope=scope) as budget:
        assert budget.limit_mb == pytest.approx(900)  # 90% of the cgroup's 1000 MB
        assert run(budget, reader) == list(range(3000))
    assert max(budget.batch_sizes) == largest
    expected = "cgroup:/fake/job" if scope != "process" else None
    assert group.keys == [expected]  # the working set is shared with the cgroup's loops


def test_page_cache_in_the_cgroup_does_not_shrink_batches(tmp_path: Path) -> None:
    """A real GroupReader over a fake v2 tree: 550 MB of the cgroup's usage is inactive file
    cache, which the working set leaves out; as anonymous memory it governs the batches."""
    tree = v2_tree(tmp_path, "/job")
    tree.file("/sys/fs/cgroup/job/memory.current", str(650 * MB))

    own_ledger = Ledger()  # not the machine's shared ledgers
    largest = {}
    for inactive_mb in (550, 0):
        tree.file(
            "/sys/fs/cgroup/job/memory.stat", f"anon {100 * MB}\ninactive_file {inactive_mb * MB}"
        )
        reader = ItemCost(base_mb=100, cost_mb=2)
        group = GroupReader(str(tree.proc), str(tree.sys), ledger=own_ledger)
        monitor = monitor_with(reader, CGROUP_1000, group)
        with memory_budget(batch_size=300, monitor=monitor) as budget:
            run(budget, reader)
        largest[inactive_mb] = max(budget.batch_sizes)
    assert largest == {550: 300, 0: 100}  # 900 - 650 = 250 MB free: 80% of it at 2 MB an item


# -- host: MemAvailable less a reserve bounds the headroom -------------------------------------
def test_mem_available_bounds_a_budget_on_a_host_without_a_limit() -> None:
    assert HOST_RESERVE == 256 * MB
    reader, group = ItemCost(base_mb=100, cost_mb=2), FakeGroup()
    group.cgroup = None
    monitor = monitor_with(reader, HOST_64G, group)
    with memory_budget(2000, batch_size=500, monitor=monitor) as budget:
        group.available_mb = 456  # 200 MB above the reserve
        run(budget, reader, 1000)
        before = len(budget.batch_sizes)
        group.available_mb = 306  # another program took 150 MB: 50 MB above the reserve
        run(budget, reader, 1000)
    assert max(budget.batch_sizes[:before]) == 80  # 80% of 200 MB at 2 MB an item
    assert max(budget.batch_sizes[before + 3 :]) == 20  # 80% of 50 MB
    assert group.keys == [None, None]  # no cgroup limit: RSS is shared in-process only
    with memory_budget(2000, batch_size=500, monitor=monitor, scope="process") as budget:
        run(budget, reader, 2000)
    assert max(budget.batch_sizes) == 500  # scope="process" never reads the host


def test_share_node_splits_mem_available_with_the_nodes_other_processes(tmp_path: Path) -> None:
    reader = ItemCost(base_mb=100, cost_mb=2)
    largest = {}
    for share in (False, True):
        group = FakeGroup()
        group.cgroup, group.available_mb = None, 456  # 200 MB above the reserve
        # Another process on the node (pid 1 stands in for a worker) holds 60 MB reserved.
        path = tmp_path / f"node-{share}.bin"
        path.write_bytes(RECORD.pack(1, _start_time(1) or 0, 1, 60 * MB))
        group.the_ledger = Ledger(path)
        monitor = monitor_with(reader, HOST_64G, group, share_node=share)
        with memory_budget(2000, batch_size=500, monitor=monitor) as budget:
            run(budget, reader, 1000)
        largest[share] = max(budget.batch_sizes)
        assert group.keys == (["node"] if share else [None])
    # Alone: 80% of 200 MB at 2 MB an item. Shared: min(200 - 60, 200 / 2) = 100 MB, 80% of it.
    assert largest == {False: 80, True: 40}


# -- tree: the process and its descendants -------------------------------------------------------
def test_tree_scope_sizes_on_the_trees_memory_and_learns_its_peaks() -> None:
    rss, group = ItemCost(base_mb=100, cost_mb=0), FakeGroup()
    group.tree_mb = 300  # children hold 200 MB that this process's RSS never shows
    monitor = monitor_with(rss, HOST_64G, group)
    with memory_budget(500, batch_size=300, monitor=monitor, scope="tree") as budget:
        for batch in budget.chunks(range(3000)):
            group.pending_mb = 2 * len(batch)  # the children's peak for this batch
    # 500 - 300 = 200 MB of headroom at 2 MB an item: 80% of it.
    assert max(budget.batch_sizes) == 80
    assert budget.batch_sizes[-2] >= 70
    with memory_budget(500, batch_size=300, monitor=monitor, scope="process") as budget:
        for batch in budget.chunks(range(3000)):
            group.pending_mb = 2 * len(batch)
    assert max(budget.batch_sizes) == 300  # the process alone sees neither


def test_tree_scope_falls_back_to_rss_where_no_tree_can_be_read() -> None:
    reader, group = ItemCost(base_mb=100, cost_mb=2), FakeGroup()
    monitor = monitor_with(reader, HOST_64G, group)
    with memory_budget(500, batch_size=300, monitor=monitor, scope="tree") as budget:
        run(budget, reader)
    assert max(budget.batch_sizes) == 160  # 80% of 400 MB at 2 MB an item (sampled peaks)


# -- shared headroom ------------------------------------------------------------------------------
def test_two_loops_in_one_process_each_plan_on_their_share() -> None:
    reader, group = ItemCost(base_mb=100, cost_mb=2), FakeGroup()
    group.cgroup = None
    monitor = monitor_with(reader, HOST_64G, group)
    a = memory_budget(500, batch_size=400, monitor=monitor)
    b = memory_budget(500, batch_size=400, monitor=monitor)
    with a, b:
        loops = [a.chunks(range(2000)), b.chunks(range(1000, 5000))]
        handed: list[list[int]] = [[], []]
        live = [0, 0]
        reserved, together, alone = [], [0, 0], 0
        while loops[0] is not None or loops[1] is not None:
            for i, loop in enumerate(loops):
                if loop is None:
                    continue
                live[i] = 0
                batch = next(loop, None)  # plans: the other loop's batch is still live
                if batch is None:
                    loops[i] = None
                    continue
                handed[i].extend(batch)
                live[i] = len(batch)
                reader.live = sum(live)
                monitor.probe.note(reader())
                reserved.append(sum(r["bytes"] for r in group.the_ledger.reservations()))
                if None in loops:
                    alone = max(alone, len(batch))
                else:
                    together[i] = max(together[i], len(batch))
    assert handed == [list(range(2000)), list(range(1000, 5000))]
    # Between them the two loops never reserved more than the 400 MB both plan on...
    assert max(reserved) <= 400 * MB
    # ... each planned on at most half of it (80% of 200 MB at 2 MB an item) while both ran,
    # and neither starved (each window also holds the other loop's batch, which comes and
    # goes: the worst ratio seen, about 1.5x, is planned on) ...
    assert min(together) >= 25 and max(together) <= 80
    # ... and the loop left alone had the whole headroom back (80% of 400 MB at ~2 MB an item).
    assert alone > 150
    assert group.the_ledger.reservations() == []  # both ended


def test_a_loop_waits_its_turn_then_takes_the_headroom_released() -> None:
    reader = ItemCost(base_mb=100, cost_mb=2)
    sleeps: list[float] = []
    group = FakeGroup(sleep=lambda s: (sleeps.append(s), release_after(3)))
    group.cgroup = None
    ledger = group.the_ledger

    def release_after(n: int) -> None:
        if len(sleeps) == n:
            ledger.release(999)

    monitor = monitor_with(reader, HOST_64G, group)
    with memory_budget(500, batch_size=100, monitor=monitor) as budget:
        loop = budget.chunks(range(1000))
        for _ in range(10):  # learn the cost: 2 MB an item
            batch = next(loop)
            reader.peak(monitor.probe, len(batch))
        assert sleeps == []
        ledger.plan(999, lambda turn: 399 * MB)  # another loop holds all but 1 MB
        batch = next(loop)
        assert len(sleeps) == 3  # waited three polls, holding nothing, until it was released
        assert len(batch) == 100  # then planned on the whole headroom again
        ledger.plan(999, lambda turn: 399 * MB)  # and this time nobody releases
        batch = next(loop)
        assert len(sleeps) == 3 + MAX_POLLS  # it waited no longer than MAX_POLLS polls
        assert len(batch) == 1  # then went ahead with what fits
        loop.close()
    assert ledger.reservations() == [
        {"pid": ledger.reservations()[0]["pid"], "loop": 999, "bytes": 399 * MB}
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_process_gives_its_headroom_back_to_a_running_loop_within_one_batch(
    tmp_path: Path,
) -> None:
    """A real process holds 600 of the cgroup's 800 MB free in a real ledger file; SIGKILL
    ends it between two batches of a running loop, and the very next batch plans on all of it."""
    reader, group = ItemCost(base_mb=100, cost_mb=2), FakeGroup()
    group.working_set_mb = 100  # 900 MB (90% of the cgroup's 1000) less 100: 800 MB free
    group.the_ledger = Ledger(tmp_path / "cgroup.bin")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        start = _start_time(holder.pid)
        assert start is not None
        (tmp_path / "cgroup.bin").write_bytes(RECORD.pack(holder.pid, start, 1, 600 * MB))
        monitor = monitor_with(reader, CGROUP_1000, group)
        with memory_budget(batch_size=1000, monitor=monitor) as budget:
            loop = budget.chunks(range(10_000))
            sizes = []
            for batch in loop:
                sizes.append(len(batch))
                reader.peak(monitor.probe, len(batch))
                if len(sizes) == 12:
                    holder.send_signal(signal.SIGKILL)
                    holder.wait()
                if len(sizes) == 14:
                    break
            reserved = group.the_ledger.reservations()
    finally:
        holder.kill()
        holder.wait()
    # While it lived: 800 - 600 = 200 MB left, 80% of it at 2 MB an item, batch after batch.
    assert sizes[8:12] == [80, 80, 80, 80]
    # The batch after the kill doubled (slow start's most), the one after that to 80% of 800 MB.
    assert sizes[12:] == [160, 320]
    assert [r["pid"] for r in reserved] == [os.getpid()]


@pytest.mark.parametrize("end", ["finished", "broken off", "raised"])
def test_a_loops_reservation_ends_with_the_loop(end: str) -> None:
    reader, group = ItemCost(base_mb=100, cost_mb=2), FakeGroup()
    monitor = monitor_with(reader, HOST_64G, group)
    with memory_budget(500, monitor=monitor) as budget:
        try:
            for i, batch in enumerate(budget.chunks(range(100))):
                reader.peak(monitor.probe, len(batch))
                assert len(group.the_ledger.reservations()) == 1
                if i == 3 and end == "broken off":
                    break
                if i == 3 and end == "raised":
                    raise KeyError("boom")
        except KeyError:
            pass
    assert group.the_ledger.reservations() == []


def test_asyncio_tasks_share_the_headroom_and_never_sleep() -> None:
    reader = ItemCost(base_mb=100, cost_mb=2)
    group = FakeGroup(sleep=lambda s: pytest.fail("a task slept: the event loop would block"))
    group.cgroup = None
    monitor = monitor_with(reader, HOST_64G, group)
    reserved: list[int] = []

    async def task(n: int) -> list[int]:
        got: list[int] = []
        async with memory_budget(500, batch_size=400, monitor=monitor) as budget:
            async for batch in budget.achunks(range(n * 1000, n * 1000 + 500)):
                got.extend(batch)
                reader.live += len(batch)
                monitor.probe.note(reader())
                reserved.append(sum(r["bytes"] for r in group.the_ledger.reservations()))
                await asyncio.sleep(0)
                reader.live -= len(batch)
        return got

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(task(n) for n in range(8)))

    results = asyncio.run(main())
    assert results == [list(range(n * 1000, n * 1000 + 500)) for n in range(8)]
    assert max(reserved) <= 400 * MB
    assert group.the_ledger.reservations() == []


def test_the_health_report_shows_the_group_and_who_holds_reservations(tmp_path: Path) -> None:
    reader = ItemCost(base_mb=100, cost_mb=2)
    group, root = busy_v2_group(tmp_path)
    monitor = monitor_with(reader, CGROUP_1000, group)
    with memory_budget(batch_size=8, monitor=monitor) as budget:
        for i, batch in enumerate(budget.chunks(range(100))):
            reader.peak(monitor.probe, len(batch))
            if i == 5:
                during = monitor.get_health_status()["group"]
    after = monitor.get_health_status()["group"]
    assert during["auto_counts"] == "process RSS and the cgroup's working set"
    assert during["cgroup"] == {"version": "v2", "path": root + "/sys/fs/cgroup/job"}
    assert (during["cgroup_usage_mb"], during["cgroup_working_set_mb"]) == (650.0, 100.0)
    assert during["cgroup_limit_mb"] == 1000.0
    assert during["host_available_mb"] == 1000.0
    assert during["pressure_some_avg10"] == 12.5
    # The loop holds its sixth batch's reservation: 8 items at the 2 MB each it measured.
    (loop,) = during["reservations"]
    assert (loop["ledger"], loop["pid"], loop["bytes"]) == ("process", os.getpid(), 16 * MB)
    assert (during["reserved_mb"], during["processes_reserving"]) == (16.0, 1)
    assert (after["reservations"], after["reserved_mb"]) == ([], 0.0)


def test_a_budget_reports_the_cgroups_peak_over_its_loops(tmp_path: Path) -> None:
    tree = v2_tree(tmp_path, "/job")
    own = "/sys/fs/cgroup/job"
    tree.file(f"{own}/memory.current", str(400 * MB))
    tree.file(f"{own}/memory.stat", f"inactive_file {100 * MB}")
    tree.file(f"{own}/memory.max", str(1000 * MB))
    reader = ItemCost(base_mb=100, cost_mb=2)
    group = GroupReader(str(tree.proc), str(tree.sys), ledger=Ledger())
    monitor = monitor_with(reader, CGROUP_1000, group)
    with memory_budget(batch_size=50, monitor=monitor, scope="cgroup") as sampled:
        run(sampled, reader, 200)
    # No memory.peak: the highest working set read at a batch's start.
    assert sampled.stats()["group_peak_mb"] == 300.0
    assert sampled.stats()["group_peak_source"] == "sampled"
    tree.file(f"{own}/memory.peak", str(5000 * MB))
    with memory_budget(batch_size=50, monitor=monitor, scope="cgroup") as exact:
        for i, _ in enumerate(exact.chunks(range(200))):
            if i == 1:  # the kernel's peak through the loop's descriptor since it reset it
                tree.file(f"{own}/memory.peak", str(420 * MB))
    assert (exact.group_peak_mb, exact.group_peak_source) == (420.0, "memory.peak")
    with memory_budget(batch_size=50, monitor=monitor, scope="process") as process:
        run(process, reader, 200)
    assert (process.group_peak_mb, process.group_peak_source) == (None, None)
