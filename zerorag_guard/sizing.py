"""Adaptive batch sizes: learn the memory cost per item, size batches to fit the headroom.

Pure arithmetic on byte counts, so it is tested with exact figures. The policy is TCP's:

- slow start: the first batch is ``min_size`` and no batch is more than twice the one before,
  so the budget holds from the first batch even before anything is known of the items;
- once the cost per item is measured (from each batch's exact peak over the memory it started
  from), a batch is as large as ``SAFETY`` of the headroom allows, capped at the target size
  (``max_size`` when one is given);
- a batch whose peak came near the limit halves the next one at once.
"""

from __future__ import annotations

import collections
from typing import Optional

#: Share of the headroom a batch may plan to use; the rest absorbs items costlier than measured.
SAFETY = 0.8
#: A batch peaking above this share of the limit halves the next batch, whatever the estimate.
NEAR_LIMIT = 0.9
#: Per-item costs remembered; the largest of them is used, so one cheap batch cannot mislead.
MEMORY = 4
#: Far from the limit, one batch in this many is still measured exactly, to keep learning.
RELEARN = 8


class BatchSizer:
    """Chooses the next batch size from the memory now, the limit and what batches cost."""

    def __init__(self, target: int, min_size: int = 1, max_size: Optional[int] = None) -> None:
        self.min_size = min_size
        self.cap = max(max_size or target, min_size)
        self.last = 0
        self._costs: collections.deque[float] = collections.deque(maxlen=MEMORY)
        self._halve = False
        self._cheap = 0

    @property
    def cost_per_item(self) -> Optional[float]:
        """Bytes one item adds to the peak, from recent batches; None until measured."""
        known = [c for c in self._costs if c > 0]
        return max(known) if known else None

    def next_size(self, rss: int, limit: int) -> int:
        """The size of the next batch for ``rss`` bytes in use now under a ``limit``."""
        headroom = limit - rss
        grow = self.min_size if self.last == 0 else min(self.cap, 2 * self.last)
        cost = self.cost_per_item
        size = grow if cost is None else min(grow, int(SAFETY * headroom / cost))
        if self._halve:
            size = min(size, self.last // 2)
            self._halve = False
        if headroom <= 0:
            size = self.min_size
        self.last = max(self.min_size, min(size, self.cap))
        return self.last

    def needs_exact_peak(self, size: int, rss: int, limit: int) -> bool:
        """Whether the next batch must be measured exactly (the kernel's mark, ~100 µs).

        It must while the cost per item is unknown, on every ``RELEARN``-th batch, and whenever
        the batch could use a quarter of the headroom: a cheap measurement (sampled readings)
        misses spikes, and with the batch planned at four times less than the headroom, a cost
        underestimated even fourfold cannot break the ceiling.
        """
        if not self._costs or self._cheap >= RELEARN - 1:
            self._cheap = 0
            return True
        cost = max(self._costs)  # zero when the items measured cost nothing
        if 4 * size * cost >= limit - rss:
            self._cheap = 0
            return True
        self._cheap += 1
        return False

    def learn(
        self, size: int, start_rss: int, peak_rss: int, limit: int, exact: bool = True
    ) -> None:
        """Record a finished batch of ``size`` items that peaked at ``peak_rss``. Only exact
        peaks teach the cost per item; any peak near the limit halves the next batch."""
        if size > 0 and exact:
            self._costs.append(max(0, peak_rss - start_rss) / size)
        if peak_rss > NEAR_LIMIT * limit:
            self._halve = True
