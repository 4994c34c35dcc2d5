"""BatchSizer: slow start, headroom fit, halving, and when a batch needs an exact peak."""

from __future__ import annotations

from zerorag_guard.probes import MB
from zerorag_guard.sizing import RELEARN, BatchSizer


def test_slow_start_doubles_up_to_the_cap() -> None:
    sizer = BatchSizer(target=50)
    sizes = [sizer.next_size(100 * MB, 1000 * MB) for _ in range(8)]
    assert sizes == [1, 2, 4, 8, 16, 32, 50, 50]


def test_the_headroom_fit_and_the_halving_near_the_limit() -> None:
    sizer = BatchSizer(target=500)
    for _ in range(10):
        size = sizer.next_size(100 * MB, 300 * MB)
        sizer.learn(size, 100 * MB, 100 * MB + size * 2 * MB, 300 * MB)
    assert sizer.last == 80  # 80% of 200 MB of headroom at 2 MB an item
    sizer.learn(80, 100 * MB, 290 * MB, 300 * MB)  # above 90% of the limit, and 2.4 MB an item
    assert sizer.next_size(100 * MB, 300 * MB) == 40


def test_exact_peaks_while_learning_and_near_the_limit_cheap_far_from_it() -> None:
    sizer = BatchSizer(target=100)
    limit = 1000 * MB
    assert sizer.needs_exact_peak(1, 100 * MB, limit)  # nothing known yet
    sizer.learn(1, 100 * MB, 100 * MB + 10_000, limit)  # ~10 KB an item
    plan = []
    for _ in range(3 * RELEARN):
        plan.append(sizer.needs_exact_peak(100, 100 * MB, limit))
        sizer.learn(100, 100 * MB, 100 * MB + 1_000_000, limit, exact=plan[-1])
    # The first batch of 100 is larger than any measured: exact. Then, far from the limit
    # (100 items x 10 KB x 4 << 900 MB), one exact batch in RELEARN.
    assert [i for i, exact in enumerate(plan) if exact] == [0, RELEARN, 2 * RELEARN]
    # Near it, every batch is exact: 4 x 100 items x 10 KB is more than the headroom.
    assert all(sizer.needs_exact_peak(100, limit - 3 * MB, limit) for _ in range(RELEARN))


def test_cheap_peaks_do_not_teach_the_cost() -> None:
    sizer = BatchSizer(target=100)
    sizer.learn(10, 100 * MB, 100 * MB + 10 * MB, 1000 * MB)  # exact: 1 MB an item
    sizer.learn(10, 100 * MB, 100 * MB, 1000 * MB, exact=False)  # sampled: saw nothing
    assert sizer.cost_per_item == MB


def test_a_batch_that_cost_nothing_leaves_the_cost_unknown() -> None:
    # Seen in CI: the first item (200 KB) landed on free memory that was resident already, so its
    # exact peak rose by nothing. Its batches must stay exact until a cost shows, or slow start
    # doubles past the headroom unmeasured (a 256-item batch of 200 KB under 40 MB of headroom).
    sizer = BatchSizer(target=500)
    rss, limit, item = 100 * MB, 140 * MB, 200 * 1024
    sizes = []
    for n in range(12):
        size = sizer.next_size(rss, limit)
        assert sizer.needs_exact_peak(size, rss, limit), (n, size)  # unknown: always exact
        sizes.append(size)
        if size * item > 2 * MB:  # beyond the free memory at hand, the items show
            break
        sizer.learn(size, rss, rss, limit)  # exact, and it rose by nothing
    assert sizer.cost_per_item is None
    sizer.learn(sizes[-1], rss, rss + sizes[-1] * item, limit)
    # Known now: slow start goes on up to what fits 80% of the headroom, and never past it.
    for _ in range(8):
        size = sizer.next_size(rss, limit)
        sizes.append(size)
        sizer.learn(size, rss, rss + size * item, limit)
    assert max(sizes) == sizes[-1] == int(0.8 * 40 * MB / item) == 163


def test_a_batch_that_went_as_planned_near_the_limit_is_not_halved() -> None:
    # A job that starts at 100 of 140 MB: 80% of the headroom peaks at 132 MB, above 90% of the
    # limit by design. As long as the items cost what was measured, the size holds.
    sizer = BatchSizer(target=500)
    rss, limit, item = 100 * MB, 140 * MB, 200 * 1024
    sizes = []
    for _ in range(14):
        size = sizer.next_size(rss, limit)
        sizes.append(size)
        sizer.learn(size, rss, rss + size * item, limit)
    assert sizes[-6:] == [163] * 6
    # One batch whose items cost 20% more than measured: the next is halved at once.
    sizer.learn(163, rss, rss + int(163 * item * 1.2), limit)
    assert sizer.next_size(rss, limit) == 81


def test_every_batch_larger_than_any_measured_is_measured_exactly() -> None:
    # The CI case: the first item measured 4 KB (it reused free memory); the items cost 200 KB.
    sizer = BatchSizer(target=500)
    rss, limit, item = 100 * MB, 140 * MB, 200 * 1024
    size = sizer.next_size(rss, limit)
    assert sizer.needs_exact_peak(size, rss, limit)
    sizer.learn(size, rss, rss + 4096, limit)
    sizes, exact = [], []
    for _ in range(10):
        size = sizer.next_size(rss, limit)
        sizes.append(size)
        exact.append(sizer.needs_exact_peak(size, rss, limit))
        sizer.learn(size, rss, rss + size * item, limit, exact[-1])
    assert max(sizes) == 163  # never past 80% of the 40 MB of headroom
    growing = [i for i in range(1, len(sizes)) if sizes[i] > max(sizes[:i])]
    assert all(exact[i] for i in growing) and exact[0]
    # At a steady size far from the limit, cheap batches come back.
    assert not sizer.needs_exact_peak(4, rss, 1000 * MB)
