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
    sizer.learn(80, 100 * MB, 290 * MB, 300 * MB)  # this one peaked above 90% of the limit
    assert sizer.next_size(100 * MB, 300 * MB) == 40


def test_exact_peaks_while_learning_and_near_the_limit_cheap_far_from_it() -> None:
    sizer = BatchSizer(target=100)
    limit = 1000 * MB
    assert sizer.needs_exact_peak(1, 100 * MB, limit)  # nothing known yet
    sizer.learn(1, 100 * MB, 100 * MB + 10_000, limit)  # ~10 KB an item
    plan = [sizer.needs_exact_peak(100, 100 * MB, limit) for _ in range(3 * RELEARN)]
    # Far from the limit (100 items x 10 KB x 4 << 900 MB): one exact batch in RELEARN.
    assert plan.count(True) == 3
    assert plan[RELEARN - 1] and plan[2 * RELEARN - 1]
    # Near it, every batch is exact: 4 x 100 items x 10 KB is more than the headroom.
    assert all(sizer.needs_exact_peak(100, limit - 3 * MB, limit) for _ in range(RELEARN))


def test_cheap_peaks_do_not_teach_the_cost() -> None:
    sizer = BatchSizer(target=100)
    sizer.learn(10, 100 * MB, 100 * MB + 10 * MB, 1000 * MB)  # exact: 1 MB an item
    sizer.learn(10, 100 * MB, 100 * MB, 1000 * MB, exact=False)  # sampled: saw nothing
    assert sizer.cost_per_item == MB
