"""Pace: batch sizes capped by their time per item, alone and inside a BatchSizer."""

from __future__ import annotations

from typing import Callable

from zerorag_guard.budget.pace import PACE_MIN_SECONDS, PACE_RETRY, Pace
from zerorag_guard.budget.sizing import BatchSizer
from zerorag_guard.memory.probes import MB


# -- time: a larger batch that is slower per item ---------------------------------------------
def timed(sizer: BatchSizer, seconds_per_item: Callable[[int], float], batches: int) -> list[int]:
    """``batches`` batches far from any limit (1 MB an item, 10 GB of room), each taking
    ``seconds_per_item(size)`` per item."""
    sizes = []
    for _ in range(batches):
        size = sizer.next_size(100 * MB, 10_000 * MB)
        sizer.learn(
            size, 100 * MB, (100 + size) * MB, 10_000 * MB, seconds=size * seconds_per_item(size)
        )
        sizes.append(size)
    return sizes


def test_batches_do_not_grow_into_sizes_slower_per_item() -> None:
    # A model that pads each call to its longest text: 8-15 items a call is the fastest per
    # item, 16 and more 30% slower. Slow start reaches 16, which is slower on its one batch:
    # growth holds at 16 until a second batch says it is slower, then the loop goes back to
    # 8, the size that set the pace of the class below, and stays there but for one batch in
    # PACE_RETRY, which measures the slower class again at its smallest size.
    sizes = timed(BatchSizer(64), lambda n: 0.02 if n < 8 else 0.01 if n < 16 else 0.013, 80)
    assert sizes[:8] == [1, 2, 4, 8, 16, 16, 8, 8]
    later = sizes[6:]
    assert set(later) == {8, 16} and later.count(16) == len(later) // PACE_RETRY
    # Where larger is as fast or faster per item, the pace caps nothing: batches reach the target.
    assert timed(BatchSizer(64), lambda n: 0.01 + 0.05 / n, 12)[-1] == 64
    assert timed(BatchSizer(64), lambda n: 0.01, 12)[-1] == 64


def test_one_retry_as_fast_as_the_rest_lifts_the_cap() -> None:
    # The real model at 600 MB over it: batches of 2 and 3 took 62 and 57 ms a passage (the
    # machine's noise; later, 42), against 50 for the first batch of one. Capped at 1, the
    # retry's batch of 2 at 42 ms did not lift the cap while the class kept its older readings
    # (the median of three), and the job ran 30 batches of one before a second retry did.
    pace = Pace()
    for size, seconds in [(1, 0.050), (2, 2 * 0.062), (3, 3 * 0.057)]:
        pace.learn(size, seconds)
    caps = []
    while len(caps) < 2 * PACE_RETRY:
        caps.append(pace.cap())
        size = caps[-1] or 4
        pace.learn(size, size * (0.042 if size > 1 else 0.041))
    assert caps[0] == 1 and caps.index(2) == PACE_RETRY - 3 and caps[-1] is None


def test_one_slow_batch_holds_growth_and_caps_nothing_below_it() -> None:
    # A persistent store: each write costs ~50 ms, and one write of 2 items took 120 ms. Read
    # as a pace, it held a job of 20,000 items to batches of one. One slow batch holds growth
    # at its size for the next batch, which tells: a fast one lifts the hold.
    pace = Pace()
    pace.learn(1, 0.050)
    pace.learn(2, 0.120)
    assert pace.cap() == 2
    pace.learn(3, 0.075)  # the class's second batch is as fast per item as 1
    assert pace.cap() is None
    pace = Pace()
    pace.learn(1, 0.050)
    pace.learn(2, 0.120)
    pace.learn(2, 0.130)  # twice: that class is slower per item
    assert pace.cap() == 1


def test_one_batch_never_caps_below_its_class() -> None:
    # The real model on a loaded machine: a batch of 8 took 156 ms a passage after one of 4 at
    # 111, and the next batches of 7 ran at 96 to 144. One batch holds growth at its size.
    pace = Pace()
    pace.learn(4, 4 * 0.111)
    pace.learn(8, 8 * 0.156)
    assert pace.cap() == 8


def test_a_slow_class_is_tried_again_and_lifted_when_it_got_faster() -> None:
    pace = Pace()
    for size, per_item in [(8, 0.01), (16, 0.02), (16, 0.02)]:
        pace.learn(size, size * per_item)
    assert pace.cap() == 8
    for _ in range(3):  # the retries show 16-31 as fast as 8-15 now (the median of the last 3)
        pace.learn(16, 16 * 0.01)
    assert pace.cap() is None


def test_batches_too_quick_to_time_teach_no_pace() -> None:
    pace = Pace()
    pace.learn(8, 8 * 0.0001)
    pace.learn(32, PACE_MIN_SECONDS / 2)  # 4x slower per item, but within the clock's noise
    assert pace.cap() is None


def test_the_retry_comes_once_in_pace_retry_batches_at_the_slow_class_smallest_size() -> None:
    pace = Pace()
    pace.learn(8, 0.1)
    pace.learn(16, 0.4)
    pace.learn(16, 0.4)
    caps = []
    for _ in range(2 * PACE_RETRY):
        caps.append(pace.cap())
        pace.learn(8, 0.1)
    assert caps.count(16) == 2 and caps.count(8) == 2 * PACE_RETRY - 2


def test_a_capped_loop_goes_back_to_the_size_measured_at_the_pace_not_to_its_class_top() -> None:
    # The real model at 600 MB over it: batches of 16 ran at 41 ms a passage, of 32 and more at
    # 50-59, and of 30-31 (the class of 16) at 48-54. Capped at the top of the class below the
    # slower one, the loop ran at 31 until two batches there said that class was slower too.
    pace = Pace()
    for size, ms in [(8, 38), (16, 41), (32, 52), (32, 55)]:
        pace.learn(size, size * ms / 1000)
    assert pace.cap() == 16
    pace.learn(16, 16 * 0.040)
    assert pace.cap() == 16  # the size that set the class's pace, the one measured there
