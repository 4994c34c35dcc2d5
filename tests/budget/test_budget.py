"""memory_budget: limits, policies, adaptive chunks, nesting, and nothing lost."""

from __future__ import annotations

import asyncio

import pytest
from budget_helpers import ItemCost, Steady, Trace, monitor_with
from hypothesis import given, settings
from hypothesis import strategies as st

from zerorag_guard import Level, MemoryBudgetExceeded, memory_budget
from zerorag_guard.budget.budget import current_budget
from zerorag_guard.budget.sizing import BatchSizer
from zerorag_guard.memory.limits import EffectiveLimit
from zerorag_guard.memory.probes import MB
from zerorag_guard.monitor import cleanup as cleanup_module

# -- limits ---------------------------------------------------------------------------------------


def test_default_limit_is_the_main_threshold() -> None:
    monitor = monitor_with(Steady(100), threshold_mb=700, critical_threshold_mb=900)
    assert memory_budget(monitor=monitor).limit_mb == pytest.approx(700)


def test_default_limit_never_passes_90_percent_of_the_effective_limit() -> None:
    cgroup = EffectiveLimit(500 * MB, "cgroup v1", "/sys/fs/cgroup/memory/job")
    monitor = monitor_with(Steady(100), cgroup)
    assert memory_budget(monitor=monitor).limit_mb == pytest.approx(450)
    assert memory_budget(2000, monitor=monitor).limit_mb == pytest.approx(450)


def test_increase_mb_counts_from_memory_at_entry_and_the_lower_limit_wins() -> None:
    reader = Steady(300)
    monitor = monitor_with(reader)
    with memory_budget(800, increase_mb=100, monitor=monitor) as budget:
        assert budget.limit_mb == pytest.approx(400)
    with memory_budget(350, increase_mb=100, monitor=monitor) as budget:
        assert budget.limit_mb == pytest.approx(350)


def test_configure_at_run_time_moves_a_default_ceiling() -> None:
    monitor = monitor_with(Steady(100))
    with memory_budget(monitor=monitor) as budget:
        monitor.configure(threshold_mb=500, critical_threshold_mb=600)
        assert budget.limit_mb == pytest.approx(500)


def test_the_tightest_enclosing_budget_governs() -> None:
    monitor = monitor_with(Steady(100))
    with memory_budget(600, monitor=monitor) as outer:
        with memory_budget(900, monitor=monitor) as inner:
            assert inner.limit_mb == pytest.approx(600)
            with memory_budget(300, monitor=monitor) as innermost:
                assert innermost.limit_mb == pytest.approx(300)
        assert outer.limit_mb == pytest.approx(600)
    with memory_budget(900, monitor=monitor) as alone:
        assert alone.limit_mb == pytest.approx(900)


def test_a_budget_left_before_one_inside_it_governs_no_more() -> None:
    # Left out of the order they were entered in (generators, a manual __exit__): the outer
    # one stops governing when it is left, and none stays active after both.
    monitor = monitor_with(Steady(100))
    outer, inner = memory_budget(300, monitor=monitor), memory_budget(900, monitor=monitor)
    outer.__enter__()
    inner.__enter__()
    assert current_budget() is inner and inner.limit_mb == pytest.approx(300)
    outer.__exit__(None, None, None)
    assert current_budget() is inner and inner.limit_mb == pytest.approx(900)
    with memory_budget(1000, monitor=monitor) as nested:
        assert nested.limit_mb == pytest.approx(900)
    inner.__exit__(None, None, None)
    assert current_budget() is None


def test_sizes_as_strings() -> None:
    monitor = monitor_with(Steady(100))
    assert memory_budget("1.5 GB", monitor=monitor).limit_mb == pytest.approx(1536)
    assert memory_budget("512MiB", monitor=monitor).limit_mb == pytest.approx(512)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit_mb": -5}, "limit_mb=-5"),
        ({"limit_mb": 0}, "limit_mb=0"),
        ({"limit_mb": "lots"}, "limit_mb='lots'"),
        ({"increase_mb": float("nan")}, "increase_mb=nan"),
        ({"on_exceed": "explode"}, "on_exceed='explode'"),
        ({"min_batch_size": 10, "max_batch_size": 5}, "min_batch_size=10 is above"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 50, "max_batch_size": 10}, "batch_size=50 is outside"),
        ({"min_batch_size": 2.5}, "min_batch_size=2.5"),
    ],
)
def test_wrong_arguments_fail_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        memory_budget(**kwargs)  # type: ignore[arg-type]


# -- policies -------------------------------------------------------------------------------------


def test_raise_raises_at_the_first_check_over_the_limit() -> None:
    reader = Steady(100)
    monitor = monitor_with(reader)
    with memory_budget(500, on_exceed="raise", monitor=monitor) as budget:
        assert budget.check() == pytest.approx(100)
        reader.mb = 501
        with pytest.raises(MemoryBudgetExceeded) as info:
            budget.check()
    assert info.value.rss_mb == pytest.approx(501)
    assert info.value.limit_mb == pytest.approx(500)
    assert budget.cleanups == []


def test_cleanup_escalates_standard_then_aggressive_before_raising() -> None:
    # Readings: check (over), standard cleanup before/after (still over), aggressive (still over).
    trace = Trace([100, 600, 600, 590, 590, 580])
    monitor = monitor_with(trace)
    budget = memory_budget(500, monitor=monitor)
    with budget, pytest.raises(MemoryBudgetExceeded) as info:
        budget.check()
    assert [r.strategy for r in budget.cleanups] == ["standard", "aggressive"]
    assert info.value.rss_mb == pytest.approx(580)


def test_cleanup_that_frees_enough_does_not_raise() -> None:
    trace = Trace([100, 600, 600, 590, 590, 400])
    monitor = monitor_with(trace)
    with memory_budget(500, monitor=monitor) as budget:
        assert budget.check() == pytest.approx(400)
    assert [r.strategy for r in budget.cleanups] == ["standard", "aggressive"]
    assert budget.exceeded == 1


def test_warn_never_raises_and_alerts_once() -> None:
    reader = Steady(100)
    monitor = monitor_with(reader)
    seen = []
    monitor.add_listener(seen.append)
    with memory_budget(500, on_exceed="warn", monitor=monitor) as budget:
        reader.mb = 900
        for _ in range(5):
            assert budget.check() == pytest.approx(900)
        items = [x for batch in budget.chunks(range(50)) for x in batch]
    assert items == list(range(50))
    assert budget.cleanups == []
    assert [a.kind for a in seen] == ["budget"]
    assert budget.exceeded >= 5


# -- chunks ---------------------------------------------------------------------------------------


def test_slow_start_then_target_batch_size() -> None:
    monitor = monitor_with(Steady(100))
    with memory_budget(500, batch_size=40, monitor=monitor) as budget:
        items = [x for batch in budget.chunks(range(300)) for x in batch]
    assert items == list(range(300))
    assert budget.batch_sizes[:7] == [1, 2, 4, 8, 16, 32, 40]
    assert max(budget.batch_sizes) == 40
    assert budget.processed == 300


def test_a_loop_may_start_past_slow_starts_first_batch() -> None:
    monitor = monitor_with(Steady(100))
    with memory_budget(500, batch_size=40, monitor=monitor) as budget:
        items = [x for batch in budget.chunks(range(100), first_batch_size=10) for x in batch]
    assert items == list(range(100)) and budget.batch_sizes[:3] == [10, 20, 40]
    with memory_budget(500, batch_size=40, monitor=monitor) as budget:
        assert [len(b) for b in budget.chunks(range(100), first_batch_size=1000)][:2] == [40, 40]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"first_batch_size={bad!r} is not valid"):
            budget.chunks(range(3), first_batch_size=bad)  # type: ignore[arg-type]


def test_batch_size_is_the_cap_unless_a_max_batch_size_allows_more() -> None:
    monitor = monitor_with(Steady(100), batch_size=10)
    with memory_budget(500, monitor=monitor) as budget:
        for _ in budget.chunks(range(1000)):
            pass
    assert budget.batch_sizes[:6] == [1, 2, 4, 8, 10, 10]
    with memory_budget(500, max_batch_size=64, monitor=monitor) as budget:
        for _ in budget.chunks(range(1000)):
            pass
    assert budget.batch_sizes[:8] == [1, 2, 4, 8, 16, 32, 64, 64]


def test_batches_shrink_to_fit_the_headroom() -> None:
    reader = ItemCost(base_mb=100, cost_mb=2)
    monitor = monitor_with(reader)
    with memory_budget(300, batch_size=500, monitor=monitor) as budget:
        for batch in budget.chunks(range(2000)):
            reader.peak(budget.monitor.probe, len(batch))
    # 200 MB of headroom at 2 MB an item: the sizer plans at most 80% of it, 80 items.
    assert max(budget.batch_sizes) <= 80
    assert budget.batch_sizes[-2] >= 60
    assert budget.processed == 2000


def test_batch_sizes_shrink_when_readings_approach_the_limit() -> None:
    reader = Steady(100)
    monitor = monitor_with(reader)
    with memory_budget(500, batch_size=64, monitor=monitor) as budget:
        sizes = []
        for i, batch in enumerate(budget.chunks(range(3000))):
            sizes.append(len(batch))
            if i == 10:
                reader.mb = 470  # the job's retained memory creeps towards the limit
    assert max(sizes[:11]) == 64
    assert max(sizes[12:]) < 64
    assert sum(sizes) == 3000


def test_level_cleanups_between_batches_are_progressive() -> None:
    reader = Steady(100)
    monitor = monitor_with(reader, gc_time_budget=1.0)  # no GC-time throttle in this test
    with memory_budget(600, batch_size=5, monitor=monitor) as budget:
        # Batches of 1, 2, 4, 5, ...: ten batches reach HIGH and clean up there (each cleanup
        # is a real gc.collect() over the test process's heap: keep them few).
        for i, _ in enumerate(budget.chunks(range(40))):
            # ceiling 600 = critical; main = 600 * 1000/1200 = 500; preventive = 400.
            reader.mb = {3: 420, 6: 520}.get(i, reader.mb)
    kinds = [r.strategy for r in budget.cleanups]
    assert "light" in kinds and "standard" in kinds
    assert kinds.index("light") < kinds.index("standard")
    assert budget.level(int(520 * MB)) == Level.HIGH


def test_cleanup_policy_shrinks_to_min_batch_before_raising() -> None:
    reader = Steady(100)
    monitor = monitor_with(reader)
    budget = memory_budget(500, batch_size=32, min_batch_size=2, monitor=monitor)
    handed = []
    with budget, pytest.raises(MemoryBudgetExceeded) as info:
        for i, batch in enumerate(budget.chunks(range(10_000))):
            handed.extend(batch)
            if i == 8:
                reader.mb = 700  # and cleanup cannot bring it down
    # The batch after the rise was shrunk to min_batch_size, then the budget gave up.
    assert budget.batch_sizes[-1] == 2
    assert info.value.processed == budget.processed == len(handed)
    assert [r.strategy for r in budget.cleanups][-2:] == ["standard", "aggressive"]


class FixedCost:
    """RSS of ``base_mb``; inside a batch, ``fixed_mb`` more whatever its size (a model's
    working memory): a peak the probe's window sees through :meth:`hold`."""

    def __init__(self, base_mb: float, fixed_mb: float) -> None:
        self.base, self.fixed, self.live = base_mb, fixed_mb, False

    def __call__(self) -> int:
        return int((self.base + self.fixed * self.live) * MB)

    def hold(self, monitor: object) -> None:
        self.live = True
        monitor.probe.note(self())  # type: ignore[attr-defined]
        self.live = False


@pytest.mark.parametrize("aggressive_frees_mb", [0, 40])
def test_a_budget_no_batch_can_keep_is_said_with_what_one_needs(aggressive_frees_mb: float) -> None:
    # 300 MB at rest, each batch 80 MB more whatever its size: 380 MB against a 350 MB ceiling.
    reader = FixedCost(base_mb=300, fixed_mb=80)
    monitor = monitor_with(reader)
    freed: list[float] = []

    def frees() -> None:  # a registered cache: what the cleanup gives back, once
        if aggressive_frees_mb and not freed:
            freed.append(aggressive_frees_mb)
            reader.base -= aggressive_frees_mb

    budget = memory_budget(350, batch_size=16, monitor=monitor)
    monitor.cleaner.register_cache(frees)
    handed: list[int] = []
    if aggressive_frees_mb:  # 260 + 80 = 340 MB: the smallest batch fits after the cleanup
        with budget:
            for batch in budget.chunks(range(30)):
                handed += batch
                reader.hold(monitor)
        assert handed == list(range(30)) and budget.peak_mb <= 350
        return
    with budget, pytest.raises(MemoryBudgetExceeded) as info:
        for batch in budget.chunks(range(10_000)):
            handed += batch
            reader.hold(monitor)
    error = info.value
    assert len(budget.batch_sizes) == 2  # the first batch (1 item) peaked over, then one more
    assert error.smallest_batch == 1 and error.processed == budget.processed == len(handed) == 2
    assert (error.rss_mb, error.limit_mb) == (380.0, 350.0)
    assert str(error) == (
        "memory budget cannot be kept: a batch of 1 item peaks at 380.0 MB; the ceiling is "
        "350.0 MB (after an aggressive cleanup); 2 items processed, resume from there"
    )
    assert [r.strategy for r in budget.cleanups].count("aggressive") == 1


def test_warn_says_once_that_the_smallest_batch_is_over_and_goes_on() -> None:
    reader = FixedCost(base_mb=300, fixed_mb=80)
    monitor = monitor_with(reader)
    with memory_budget(350, batch_size=16, on_exceed="warn", monitor=monitor) as budget:
        for _ in budget.chunks(range(200)):
            reader.hold(monitor)
    assert budget.processed == 200
    (alert,) = [a for a in monitor.alerts if a.kind == "budget"]
    assert alert.message.endswith("a batch of the smallest size peaks at 380.0 MB")


# -- nothing lost ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    trace=st.lists(st.floats(50, 800), min_size=1, max_size=40),
    n=st.integers(0, 400),
    fail_at=st.none() | st.integers(0, 60),
    policy=st.sampled_from(["cleanup", "raise", "warn"]),
    batch_size=st.integers(1, 50),
    min_batch=st.integers(1, 5),
)
def test_every_item_once_in_order_and_the_cursor_resumes_exactly(
    trace: list[float], n: int, fail_at: int | None, policy: str, batch_size: int, min_batch: int
) -> None:
    monitor = monitor_with(Trace(trace))
    items = list(range(n))
    done: list[int] = []
    attempts = 0
    while True:
        attempts += 1
        budget = memory_budget(
            500,
            on_exceed=policy,
            batch_size=max(batch_size, min_batch),
            min_batch_size=min_batch,
            monitor=monitor,
        )
        start = len(done)
        handed: list[int] = []
        try:
            with budget:
                for i, batch in enumerate(budget.chunks(items[start:])):
                    handed.extend(batch)
                    if fail_at is not None and attempts == 1 and i == fail_at:
                        raise RuntimeError("the loop body failed")
                    done.extend(batch)
        except (RuntimeError, MemoryBudgetExceeded) as exc:
            if isinstance(exc, MemoryBudgetExceeded):
                assert exc.processed == budget.processed
            # Handed out in order, each once; processed counts only completed batches.
            assert handed == items[start : start + len(handed)]
            assert budget.processed == len(done) - start
            if attempts > 50:
                pytest.fail("no progress")
            if isinstance(exc, MemoryBudgetExceeded):
                monitor = monitor_with(Steady(100))  # memory freed: resume under a calm trace
            continue
        assert handed == items[start:]
        assert budget.processed == n - start
        break
    assert done == items


def test_an_exception_in_the_body_leaves_the_failed_batch_unprocessed() -> None:
    monitor = monitor_with(Steady(100))
    budget = memory_budget(500, batch_size=8, monitor=monitor)
    with pytest.raises(KeyError), budget:
        for batch in budget.chunks(range(100)):
            if 20 in batch:
                raise KeyError(20)
    assert budget.processed == 15  # batches 1, 2, 4, 8: items 0..14; 15..22 failed
    with memory_budget(500, batch_size=8, monitor=monitor) as resumed:
        rest = [x for b in resumed.chunks(list(range(100))[budget.processed :]) for x in b]
    assert rest == list(range(15, 100))


def test_chunks_accepts_generators() -> None:
    monitor = monitor_with(Steady(100))
    with memory_budget(500, monitor=monitor) as budget:
        out = [x for b in budget.chunks(i * i for i in range(77)) for x in b]
    assert out == [i * i for i in range(77)]


# -- async and concurrency ------------------------------------------------------------------------


async def test_achunks_over_an_async_iterator() -> None:
    async def numbers(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    monitor = monitor_with(Steady(100))
    async with memory_budget(500, batch_size=16, monitor=monitor) as budget:
        out = [x async for b in budget.achunks(numbers(100)) for x in b]
        plain = [x async for b in budget.achunks(range(10)) for x in b]
    assert out == list(range(100))
    assert plain == list(range(10))
    assert budget.processed == 110


async def test_500_concurrent_tasks_each_get_their_own_budget() -> None:
    monitor = monitor_with(Steady(100))
    shared = memory_budget(400, batch_size=10, monitor=monitor)

    async def task(k: int) -> tuple[int, float, int]:
        async with shared as budget:
            async for batch in budget.achunks(range(k % 30)):
                await asyncio.sleep(0)
                assert batch
            return budget.processed, budget.limit_mb, k % 30

    results = await asyncio.gather(*(task(k) for k in range(500)))
    assert all(processed == expected for processed, _, expected in results)
    assert all(limit == pytest.approx(400) for _, limit, _ in results)


def test_memory_budget_as_a_decorator_gives_each_call_a_fresh_budget() -> None:
    monitor = monitor_with(Steady(100))
    seen = []

    @memory_budget(300, monitor=monitor)
    def job(n: int) -> int:
        with memory_budget(900, monitor=monitor) as inner:
            seen.append(inner.limit_mb)
        return n * 2

    assert job(21) == 42
    assert seen == [pytest.approx(300)]
    assert job.__wrapped__(1) == 2  # type: ignore[attr-defined]


def test_stats_report_what_happened() -> None:
    monitor = monitor_with(Steady(100))
    with memory_budget(500, batch_size=10, name="ingest", monitor=monitor) as budget:
        for _ in budget.chunks(range(95)):
            pass
    stats = budget.stats()
    assert stats["name"] == "ingest"
    assert stats["processed"] == 95
    assert stats["batches"] == len(budget.batch_sizes)
    assert stats["batch_size_min"] == 1 and stats["batch_size_max"] == 10
    assert stats["limit_mb"] == pytest.approx(500)
    assert stats["peak_mb"] == pytest.approx(100)


def test_routine_cleanups_respect_the_gc_time_budget() -> None:
    reader = Steady(420)  # preventive against a 600 MB ceiling: light cleanups are called for
    clock = [0.0]
    monitor = monitor_with(reader, gc_time_budget=0.05)
    monitor._cleaner._clock = lambda: clock[0]
    monitor._cleaner._started = 0.0
    monitor._cleaner.gc_seconds = 1.0  # one second of GC already spent...
    clock[0] = 10.0  # ...in ten seconds of wall time: 10%, over the 5% budget
    with memory_budget(600, batch_size=5, monitor=monitor) as budget:
        for _ in budget.chunks(range(50)):
            pass
    assert budget.cleanups == []
    clock[0] = 100.0  # now 1%: routine cleanups run again
    with memory_budget(600, batch_size=5, monitor=monitor) as budget:
        for _ in budget.chunks(range(50)):
            pass
    assert [r.strategy for r in budget.cleanups][:1] == ["light"]


def test_a_headroom_too_tight_for_a_batch_triggers_an_aggressive_cleanup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Memory the job no longer uses stays in RSS, as glibc's free lists keep it, until
    # malloc_trim (aggressive cleanup only) returns it; a stand-in plays malloc_trim here.
    reader = ItemCost(base_mb=100, cost_mb=2)
    monkeypatch.setattr(cleanup_module, "_malloc_trim", lambda pad: setattr(reader, "base", 100))
    monitor = monitor_with(reader)
    with memory_budget(300, batch_size=50, monitor=monitor) as budget:
        for i, batch in enumerate(budget.chunks(range(2000))):
            reader.peak(monitor.probe, len(batch))
            if i == 8:
                reader.base = 297  # 3 MB of headroom: not even two items fit
    kinds = [r.strategy for r in budget.cleanups]
    assert "aggressive" in kinds
    assert max(budget.batch_sizes[10:]) == 50  # batches did not collapse to min_batch_size
    assert budget.processed == 2000


def test_memory_the_allocator_keeps_and_batches_reuse_triggers_no_trim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 200 MB the job holds, 1 MB an item while a batch runs, under a 300 MB ceiling. After every
    # other batch the allocator keeps all of it (glibc's arenas), after the others none: the
    # loop starts at 200 MB or at up to 280, over 90% of the ceiling, and a batch reuses what
    # was kept. The starts' swing shows it reusable, and it does not crowd the 80% of the room
    # over the floor a batch plans on (280 MB): no trim. A trim hands back what the next batch
    # faults again and leaves the floor nothing to know it by (the real model at 250 MB over it:
    # 80 MB trimmed at 90% of the ceiling, 86 MB faulted again by the next batch, and batches of
    # 4 after it where 7 and 8 had run). Before, one in every other batch: 120 trims here.
    reader = ItemCost(base_mb=200, cost_mb=1)
    trims: list[int] = []

    def trim(pad: int) -> int:
        trims.append(pad)
        reader.kept = 0.0
        return 1

    monkeypatch.setattr(cleanup_module, "_malloc_trim", trim)
    # No cleanup held back by a cool-down or by the GC time it took.
    monitor = monitor_with(reader, gc_time_budget=1.0, aggressive_cooldown_seconds=0)
    with memory_budget(300, batch_size=100, monitor=monitor) as budget:
        for i, batch in enumerate(budget.chunks(range(20_000))):
            reader.peak(monitor.probe, len(batch))
            reader.kept = float(len(batch)) if i % 2 else 0.0
    assert trims == [] and "aggressive" not in [r.strategy for r in budget.cleanups]
    assert budget.processed == 20_000 and budget.peak_mb <= 300
    assert min(budget.batch_sizes[-11:-1]) >= 79  # 80% of the room over the floor, 1 MB an item
    # Memory that only stayed (a ratchet, to the floor) shows nothing reusable: over 90% of the
    # ceiling a trim still runs, which may hand back what glibc keeps.
    reader.base, reader.kept, reader.cost = 272.0, 0.0, 0.1
    with memory_budget(300, batch_size=100, monitor=monitor) as budget:
        for batch in budget.chunks(range(100)):
            reader.peak(monitor.probe, len(batch))
    assert trims and "aggressive" in [r.strategy for r in budget.cleanups]


def test_a_first_batch_that_warms_up_triggers_no_aggressive_cleanup() -> None:
    # The first batch (one item) also pays 150 MB once, as a model's first call does: read as
    # its cost, two items would not fit the room. Its warm-up tells nothing of the next batches,
    # so it is no reason for an aggressive cleanup (0.57 s with the real model loaded).
    reader = ItemCost(base_mb=100, cost_mb=2)
    monitor = monitor_with(reader)
    with memory_budget(300, batch_size=50, monitor=monitor) as budget:
        for i, batch in enumerate(budget.chunks(range(500))):
            reader.peak(monitor.probe, len(batch), 150 if i == 0 else 0)
    assert budget.batch_sizes[:2] == [1, 1]  # two items, 152 MB each, do not fit 80% of 200
    assert "aggressive" not in [r.strategy for r in budget.cleanups]
    assert max(budget.batch_sizes) == 50 and budget.processed == 500


def test_a_cleanup_the_monitor_ran_between_batches_starts_the_floor_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Far under the ceiling the budget runs no cleanup of its own; the monitor's (its sampler's,
    # at its levels) between two batches gives back 40 MB that glibc kept, twice: the loop's
    # sizer learns its floor again each time, as after its own. One that gave nothing back: not.
    reader = ItemCost(base_mb=100, cost_mb=1)
    monkeypatch.setattr(cleanup_module, "_malloc_trim", lambda pad: setattr(reader, "base", 100))
    monitor = monitor_with(reader)
    released: list[int] = []
    monkeypatch.setattr(BatchSizer, "released", lambda sizer: released.append(1))
    with memory_budget(1000, batch_size=8, monitor=monitor) as budget:
        for i, batch in enumerate(budget.chunks(range(80))):
            reader.peak(monitor.probe, len(batch))
            if i in (3, 6, 8):
                reader.base = 100 if i == 8 else 140  # 140: what the allocator kept
                result = monitor.cleanup("aggressive")
                assert result is not None and result.freed_bytes == (0 if i == 8 else 40 * MB)
    assert budget.cleanups == [] and budget.processed == 80
    assert len(released) == 2 and monitor.gave_back == 2


@pytest.mark.parametrize("cache_mb", [0, 40])
def test_a_cleanup_that_gave_memory_back_starts_the_floor_again(
    monkeypatch: pytest.MonkeyPatch, cache_mb: float
) -> None:
    # 230 MB at rest under a 300 MB ceiling: above the preventive level, where a light cleanup
    # runs between batches and gives back nothing. With a cache that grows 40 MB a batch (the
    # job registered it), the main level's cleanup clears it: memory given back, and the
    # sizer's floor starts again (see test_sizing's test of released()).
    reader = ItemCost(base_mb=230, cost_mb=0.1)
    monitor = monitor_with(reader, gc_time_budget=1.0)
    released: list[int] = []
    monkeypatch.setattr(BatchSizer, "released", lambda sizer: released.append(1))

    def clear() -> None:
        reader.base = 230

    monitor.cleaner.register_cache(clear)
    with memory_budget(300, batch_size=64, monitor=monitor) as budget:
        for batch in budget.chunks(range(100)):
            reader.peak(monitor.probe, len(batch))
            reader.base += cache_mb
    assert budget.processed == 100 and budget.cleanups
    gave_back = sum(r.freed_bytes >= MB for r in budget.cleanups)
    assert len(released) == gave_back and bool(gave_back) == bool(cache_mb)
