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


# A job at 100 of 140 MB whose items cost 200 KB each: 80% of the headroom fits 163 of them.
RSS, LIMIT, ITEM = 100 * MB, 140 * MB, 200 * 1024
FIT = int(0.8 * 40 * MB / ITEM)


def _run(sizer: BatchSizer, batches: int, cost: int = ITEM) -> tuple[list[int], list[bool]]:
    """``batches`` batches whose items cost ``cost`` each, measured as the sizer asks: the sizes
    and whether each was measured exactly."""
    sizes, exact = [], []
    for _ in range(batches):
        sizes.append(sizer.next_size(RSS, LIMIT))
        exact.append(sizer.needs_exact_peak(sizes[-1], RSS, LIMIT))
        sizer.learn(sizes[-1], RSS, RSS + sizes[-1] * cost, LIMIT, exact[-1])
    return sizes, exact


def test_a_batch_that_cost_nothing_leaves_the_cost_unknown() -> None:
    # Items that land on free memory already resident raise no peak: that teaches nothing, so
    # the batches stay exact until a cost shows ...
    sizer = BatchSizer(target=500)
    sizes, exact = _run(sizer, 5, cost=0)
    assert sizes == [1, 2, 4, 8, 16] and all(exact) and sizer.cost_per_item is None
    # (No larger, and far from the limit, a batch may be sampled; near it, it may not.)
    assert not sizer.needs_exact_peak(16, RSS, 1000 * MB)
    assert sizer.needs_exact_peak(16, 950 * MB, 1000 * MB)
    # ... and once it does, slow start goes on up to what fits, never past it.
    sizes, _ = _run(sizer, 8)
    assert max(sizes) == sizes[-1] == FIT == 163


def test_a_batch_that_went_as_planned_near_the_limit_is_not_halved() -> None:
    # 80% of the headroom peaks at 132 MB, above 90% of the limit by design. As long as the items
    # cost what was measured, the size holds.
    sizer = BatchSizer(target=500)
    sizes, _ = _run(sizer, 14)
    assert sizes[-6:] == [FIT] * 6
    # One batch whose items cost 20% more than measured: the next is halved at once.
    sizer.learn(FIT, RSS, RSS + int(FIT * ITEM * 1.2), LIMIT)
    assert sizer.next_size(RSS, LIMIT) == FIT // 2


def test_every_batch_larger_than_any_measured_is_measured_exactly() -> None:
    # Seen in CI: the first item measured 4 KB (it reused free memory), and slow start doubled,
    # unmeasured, to 256 items of 200 KB under 40 MB of headroom.
    sizer = BatchSizer(target=500)
    assert sizer.needs_exact_peak(sizer.next_size(RSS, LIMIT), RSS, LIMIT)
    sizer.learn(1, RSS, RSS + 4096, LIMIT)
    sizes, exact = _run(sizer, 10)
    assert max(sizes) == FIT
    growing = [i for i in range(len(sizes)) if sizes[i] > max(sizes[:i], default=1)]
    assert growing and all(exact[i] for i in growing)
    # At a steady size far from the limit, cheap batches come back.
    assert not sizer.needs_exact_peak(4, RSS, 1000 * MB)
