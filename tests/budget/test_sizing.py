"""BatchSizer: slow start, headroom fit, halving, when a batch needs an exact peak, and the cost
model of real workloads (a fixed cost, reused memory, a warm-up, a ratchet, noise)."""

from __future__ import annotations

import dataclasses
import itertools
import random
import statistics
from typing import Callable, Optional

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zerorag_guard.budget.sizing import (
    FEW,
    FEW_EXCESS,
    RELEARN,
    SAFETY,
    BatchSizer,
)
from zerorag_guard.memory.probes import MB


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


# -- the cost model: real workloads ---------------------------------------------------------------
@dataclasses.dataclass
class Workload:
    """What a batch of ``n`` items does to memory, in MB: it peaks at ``fixed + item * n`` over
    the memory it cannot reuse (times the batch's noise), plus ``warmup`` on the first batch
    only; ``ratchet`` stays after each batch; ``keep`` of the batch's peak stays resident
    afterwards as free memory the allocator keeps, which the next batch reuses."""

    start: float = 100.0
    fixed: float = 0.0
    item: float = 1.0
    warmup: float = 0.0
    ratchet: float = 0.0
    keep: float = 0.0
    target: int = 500
    limit: float = 1000.0

    def fits(self, base: float) -> int:
        """The largest batch whose worst peak (noise 1.3) fits the share of the room over
        ``base`` a batch may plan on (``SAFETY``: the rest is kept for the unknown)."""
        room = SAFETY * (self.limit - base) - 1.3 * self.fixed
        return self.target if self.item == 0 else int(room / (1.3 * self.item))

    def holds_a_noisy_run(self) -> bool:
        """What a noisy run assumes (the test and ``tools/sizer_noise.py``): a batch of 4 fits to
        the end of the run, and one item fits at all."""
        return (
            self.fits(self.start + NOISY_BATCHES * self.ratchet) >= 4
            and self.start + self.warmup + 1.3 * (self.fixed + self.item) < self.limit
        )


@dataclasses.dataclass
class Batch:
    size: int
    peak: float  # MB
    fits: int  # Workload.fits at its start


def drive(
    w: Workload,
    batches: int,
    noise: Callable[[int], float] = lambda i: 1.0,
    kept: Callable[[int], float] = lambda i: 1.0,
    sizer: Optional[BatchSizer] = None,
) -> list[Batch]:
    """``batches`` batches of ``w``, each measured exactly (the sizer asks for exact peaks near
    the limit, where these run)."""
    sizer = sizer or BatchSizer(w.target)
    base = rss = w.start  # base: the memory no batch can reuse
    out = []
    for i in range(batches):
        size = sizer.next_size(int(rss * MB), int(w.limit * MB))
        transient = (w.fixed + w.item * size) * noise(i) + (w.warmup if i == 0 else 0.0)
        peak = max(rss, base + transient)
        out.append(Batch(size, peak, w.fits(base)))
        sizer.learn(size, int(rss * MB), int(peak * MB), int(w.limit * MB))
        base += w.ratchet
        rss = base + w.keep * kept(i) * transient
    return out


def test_a_fixed_cost_is_not_read_as_a_cost_per_item() -> None:
    # 150 MB a batch whatever its size, and 0.5 MB an item: read as a cost per item, the first
    # batch (one item, 150.5 MB) would keep every batch at one or two items.
    w = Workload(fixed=150, item=0.5, target=2000)
    run = drive(w, 40)
    assert all(b.peak <= w.limit for b in run)
    fit = int((SAFETY * 900 - 150) / 0.5)  # 1140: noiseless, the line is exact
    assert max(b.size for b in run) == fit and run[-1].size == fit
    sizer = BatchSizer(2000)
    drive(w, 40, sizer=sizer)
    assert sizer.fixed_cost == 150 * MB and sizer.cost_per_item == pytest.approx(0.5 * MB)


def test_a_first_call_that_warms_up_is_not_a_cost() -> None:
    # The first batch (one item) also pays 300 MB once: thread pools, kernels. It is left out
    # of the line once later batches show their cost, so it does not hold batches back.
    w = Workload(item=2, warmup=300, target=1000)
    run = drive(w, 30)
    assert run[0].peak == 100 + 2 + 300 and all(b.peak <= w.limit for b in run)
    assert run[-1].size == int(SAFETY * 900 / 2)  # 360, as without the warm-up


def test_a_cost_flat_in_size_grows_batches_to_the_target() -> None:
    # An embedding model's call costs much the same for 8 texts as for 32: 300 MB whatever the
    # size. Slow start doubles while even all of that counted per item fits; past that, once
    # the line is settled, batches follow it a quarter further at a time, to the target.
    w = Workload(fixed=300, item=0.0, target=256)
    run = drive(w, 60)
    assert all(b.peak == 400 for b in run)
    assert run[-1].size == 256
    assert all(b.size <= 2 * a.size for a, b in itertools.pairwise(run))


def test_memory_the_allocator_kept_is_reused_by_the_next_batch() -> None:
    # After each batch the allocator keeps 0 to 100% of its peak resident (glibc's arenas):
    # the next batch starts up to 290 MB higher and reuses it, peaking where it would have.
    # Counted as memory in use, the swing would halve batches; the floor reads it as reusable.
    w = Workload(fixed=40, item=2, keep=1.0, target=1000)
    kept = [0.0, 1.0, 0.3, 0.9, 0.0, 0.6] * 10
    run = drive(w, 60, kept=kept.__getitem__)
    assert all(b.peak <= w.limit for b in run)
    fit = int((SAFETY * 900 - 40) / 2)  # 340
    assert statistics.median(b.size for b in run[-20:]) >= 0.95 * fit
    # A loop that shares its reading with others cannot tell their batches from its own
    # retained memory: it reuses nothing and counts every byte per item.
    shared = BatchSizer(1000)
    shared.share(alone=False)
    run = drive(w, 60, kept=kept.__getitem__, sizer=shared)
    assert all(b.peak <= w.limit for b in run)
    assert max(b.size for b in run[-20:]) < 0.7 * fit


def test_the_floor_is_never_above_the_memory_in_use() -> None:
    # Starts that only rise (a ratchet) show no memory to reuse: the floor is the start. (It
    # once came out above it: a drop between starts that only rose is negative.)
    sizer = BatchSizer(100)
    for k in range(10):
        sizer.learn(4, (100 + k) * MB, (101 + k) * MB, 1000 * MB)
    assert sizer.floor(110 * MB) == 110 * MB and sizer.floor(109 * MB) == 109 * MB
    sizer.learn(4, 150 * MB, 151 * MB, 1000 * MB)
    sizer.learn(4, 120 * MB, 121 * MB, 1000 * MB)  # 30 MB came back down: reusable
    assert sizer.floor(140 * MB) == 110 * MB


def test_a_cleanup_that_gave_memory_back_leaves_no_drop_to_reuse() -> None:
    # Starts rose from 100 MB (before a first call kept 150 MB) to 470 MB (what the allocator
    # kept), then a cleanup trimmed 220 MB. Read as a drop between starts, that memory would be
    # reused by the next batch; it went back to the system, and the next batch faults it again
    # (the real model at 250 MB over it: a batch of 21 after 11, 6 MB over the ceiling).
    sizer = BatchSizer(1000)
    for start in (100, 253, 300, 350, 420, 470):
        sizer.learn(4, start * MB, (start + 8) * MB, 500 * MB)
    assert sizer.floor(250 * MB) == 100 * MB
    sizer.released()
    assert sizer.floor(250 * MB) == 250 * MB
    sizer.learn(4, 250 * MB, 258 * MB, 500 * MB)  # the floor learns again from there
    assert sizer.floor(250 * MB) == 250 * MB


# A run of the real model (300 passages, 250 MB over it: a ceiling of 748.5 MB), its batches as
# the loop learned them: (size, start, peak) in MB, every peak exact; None: a cleanup trimmed
# 76 MB. After the trim, a batch of 15 faulted 132 MB, the allocator kept most of it, and 32
# batches of 3 and 4 reused it (0.0 to 1.4 MB over their starts). Once the batch of 15 left the
# window, the line fell to 0.2 MB a passage, and the run went on with a batch of 8, then one of 16
# planned at 704.5 MB that peaked at 769.7.
REAL_MODEL_RUN: list[Optional[tuple[int, float, float]]] = [
    (1, 498.5, 561.2), (2, 561.2, 585.7), (4, 578.7, 605.5), (8, 585.1, 646.2), (8, 610.7, 652.7),
    (7, 623.2, 652.9), (7, 652.9, 654.8), (7, 654.8, 655.6), (7, 655.6, 656.6), (7, 656.6, 659.1),
    (7, 659.1, 660.0), (7, 660.0, 661.3), (7, 661.3, 661.9), (7, 661.9, 663.0), (7, 663.0, 664.0),
    (7, 664.0, 664.4), (8, 664.4, 666.6), (8, 666.6, 670.7), (8, 670.7, 671.9), (8, 671.9, 672.1),
    None, (15, 596.5, 728.9), (4, 684.8, 692.6), (3, 692.6, 693.9), (3, 693.9, 694.7),
    (3, 694.7, 695.0), (3, 695.0, 695.2), (3, 695.2, 695.4), (3, 695.4, 695.5), (3, 695.5, 695.6),
    (3, 695.5, 695.6), (3, 695.6, 695.7), (3, 695.7, 696.2), (3, 696.2, 696.5), (3, 696.5, 696.8),
    (4, 696.8, 696.9), (4, 696.9, 697.0), (4, 697.0, 697.4), (4, 697.4, 697.6), (4, 697.6, 697.7),
    (4, 697.7, 697.8), (4, 697.7, 698.4), (4, 698.4, 698.6), (4, 698.6, 698.7), (4, 698.7, 698.8),
    (4, 698.7, 698.8), (4, 698.8, 699.0), (4, 699.0, 699.1), (4, 699.0, 699.2), (4, 699.2, 699.6),
    (4, 699.6, 699.7), (4, 699.7, 699.8), (4, 699.8, 700.3), (4, 700.3, 700.5),
]  # fmt: skip


def test_batches_that_reuse_what_the_allocator_kept_do_not_teach_a_cost_near_nothing() -> None:
    sizer, limit = BatchSizer(1000), int(748.5 * MB)
    for row in REAL_MODEL_RUN:
        if row is None:
            sizer.released()
            continue
        size, start, peak = row
        sizer.next_size(int(start * MB), limit)  # as the loop does: the next size follows the last
        sizer.learn(size, int(start * MB), int(peak * MB), limit)
    # The next batches: no larger than those that ran on the kept memory, planned under the
    # ceiling, and a batch of 16 planned at least at what it cost (68.5 MB over its start).
    start = int(700.5 * MB)
    chosen = sizer.next_size(start, limit)
    assert chosen <= 4 and start + sizer.need(chosen, start) <= limit
    sizer.learn(8, start, int(701.2 * MB), limit)  # what the run did next
    assert sizer.size_for(int(701.2 * MB), limit) <= 8
    assert (sizer.predict(16) or 0) >= 68.5 * MB


def test_memory_that_stays_is_counted_once_in_the_start() -> None:
    # A store's index grows 4 MB a batch and never comes back down: it is in every start, not
    # in the batches' cost, and batches shrink as it eats the headroom.
    w = Workload(item=1, ratchet=4, target=1000)
    sizer = BatchSizer(1000)
    run = drive(w, 150, sizer=sizer)
    assert all(b.peak <= w.limit for b in run)
    assert sizer.fixed_cost == 0 and sizer.cost_per_item == pytest.approx(MB, rel=0.02)
    assert run[10].size > run[-1].size
    assert run[-1].size == pytest.approx(SAFETY * (1000 - 100 - 4 * 149), rel=0.01)


def test_a_loop_stuck_at_the_smallest_size_tries_one_larger() -> None:
    # 490 MB a batch whatever its size, under 1000 MB: a batch of 2, with all of the cost per
    # item, plans at 980 MB, over 80% of the room. With one size measured, nothing can tell a
    # fixed cost from one per item: it tries 2 since 2 x 490 MB fits under the limit itself;
    # the cost then shows flat and batches grow to the target.
    w = Workload(start=0, fixed=490, item=0.0, target=100)
    run = drive(w, 30)
    assert [b.size for b in run[:3]] == [1, 2, 3] and all(b.peak <= w.limit for b in run)
    assert run[-1].size == 100
    # A cost that does grow with the size is caught at 2 and goes no further.
    w = Workload(start=0, fixed=0, item=490, target=100)
    assert [b.size for b in drive(w, 5)] == [1, 2, 1, 1, 1]


def test_a_loop_that_starts_or_stops_sharing_its_reading_learns_afresh() -> None:
    sizer = BatchSizer(1000)
    w = Workload(fixed=100, item=1)
    drive(w, 20, sizer=sizer)
    assert sizer.fixed_cost == 100 * MB
    sizer.share(alone=False)  # another loop started: its batches are in the readings now
    assert sizer.fixed_cost == 0 and sizer.cost_per_item is not None
    assert sizer.cost_per_item * sizer.last == pytest.approx(sizer.predict(sizer.last))


def _learned(pattern: list[tuple[int, float]], batches: int, fixed: int = 50) -> BatchSizer:
    """A sizer that measured a first batch of one item and then ``batches`` batches of
    ``pattern`` in turn, ``(size, noise)``: each costs ``(fixed + 1 MB an item) * noise``."""
    sizer = BatchSizer(1000)
    sizer.learn(1, 100 * MB, (101 + fixed) * MB, 10_000 * MB)
    for i in range(batches):
        size, noise = pattern[i % len(pattern)]
        sizer.learn(size, 100 * MB, 100 * MB + round((fixed + size) * noise * MB), 10_000 * MB)
    sizer.last = max(size for size, _ in pattern)
    return sizer


def test_a_few_noisy_batches_plan_on_more_noise_than_they_showed() -> None:
    # Four batches 20% under and over their cost: the largest ratio to the line is 1.2, but four
    # draws rarely hold the worst. While fewer than FEW batches are fitted, the plan is at least
    # two of their deviations over the line: 1 + 2 * 0.283 (the deviation with the line's two
    # figures counted out: sqrt(4 * 0.2^2 / 2)).
    pattern = [(8, 0.8), (16, 1.2), (8, 1.2), (16, 0.8)]
    few = _learned(pattern, 4, fixed=0)
    assert few.predict(16) == pytest.approx(16 * (1 + 2 * 0.08**0.5) * MB, rel=1e-6)
    # With FEW of them, the largest ratio is the noise again.
    many = _learned(pattern, FEW + 4, fixed=0)
    assert many.predict(16) == pytest.approx(16 * 1.2 * MB, rel=1e-6)


def test_cheap_batches_do_not_swell_the_noise_of_a_few() -> None:
    # One batch of nine cost 30% of its share (it reused memory another loop had freed): the
    # deviation it adds (1 + 2 x 0.27 over the line) says nothing of how costly a batch can be.
    # The plan is no more than FEW_EXCESS times the largest excess over the line seen (1.11).
    pattern = [(8, 1.0)] + [(16, 1.0)] * 3 + [(8, 1.0)] + [(16, 1.0)] * 3 + [(16, 0.3)]
    sizer = _learned(pattern, len(pattern), fixed=0)
    sizes, costs = [n for n, _ in pattern], [n * f for n, f in pattern]
    slope, fixed = statistics.linear_regression(sizes, costs)
    ratios = [c / (fixed + slope * n) for n, c in zip(sizes, costs)]
    deviation = (sum((r - 1) ** 2 for r in ratios) / (len(ratios) - 2)) ** 0.5
    assert max(ratios) == pytest.approx(1 / 0.9) and 1 + 2 * deviation > 1.5
    planned = (fixed + slope * 16) * (1 + FEW_EXCESS * (max(ratios) - 1))
    assert sizer.predict(16) == pytest.approx(planned * MB, rel=1e-6)


def test_a_step_past_the_largest_batch_follows_the_line_only_as_far_as_it_is_sure() -> None:
    # Batches of 64 and 104 items, 50 MB + 1 MB an item. Exact, the line is sure: past the
    # largest measured (104) batches step a quarter further (130), where the line still fits
    # though all of the cost counted per item would not (124 items).
    exact = _learned([(64, 1.0), (104, 1.0)], 30)
    assert exact.size_for(100 * MB, 100 * MB + round(185 / SAFETY * MB)) == 130
    # Under +-20% noise the same line, noise included, fits 130 too, but one standard error of
    # a line fitted 40 items apart, 26 past its end, does not (118 items): no step past what
    # all of the cost counted per item allows (122).
    noisy = _learned([(64, 0.8), (64, 1.2), (104, 0.8), (104, 1.2)], 30)
    room = 218 * MB
    assert noisy.fixed_cost is not None and noisy.cost_per_item is not None
    assert noisy.fixed_cost + 130 * noisy.cost_per_item < room  # the line alone steps to 130
    assert noisy.size_for(100 * MB, 100 * MB + round(room / SAFETY)) == 122


NOISY_BATCHES = 100


# Derandomized: the same 150 workloads on every run and every machine, so the suite cannot fail
# on one rare draw. Draws outside them are measured by tools/sizer_noise.py instead (figures on
# the budgets page: 21 batches over the ceiling in 2.4 million).
@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    w=st.builds(
        Workload,
        start=st.floats(50, 600),
        fixed=st.floats(0, 150),
        item=st.floats(0.05, 10),
        warmup=st.floats(0, 100),
        ratchet=st.floats(0, 1),
        keep=st.floats(0, 1),
        target=st.sampled_from([64, 256, 1000, 5000]),
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_noisy_workloads_keep_the_ceiling_and_reach_the_size_that_fits(
    w: Workload, seed: int
) -> None:
    # A fixed cost, a cost per item, noise of +-30% on every batch (drawn independently), a
    # warm-up on the first batch, memory that stays (a ratchet) and memory the allocator keeps.
    assume(w.holds_a_noisy_run())
    rng = random.Random(seed)
    noise = [rng.uniform(0.7, 1.3) for _ in range(NOISY_BATCHES)]
    kept = [rng.uniform(0, 1) for _ in range(NOISY_BATCHES)]
    run = drive(w, NOISY_BATCHES, noise.__getitem__, kept.__getitem__)
    # The ceiling holds: no batch peaks over it.
    assert [(i, b.size, b.fits) for i, b in enumerate(run) if b.peak > w.limit] == []
    # Batches reach at least 80% of the largest size whose worst peak fits the share of the
    # room a batch plans on (or the target).
    later = run[NOISY_BATCHES // 3 :]
    assert max(b.size / min(w.target, b.fits) for b in later) >= 0.8
