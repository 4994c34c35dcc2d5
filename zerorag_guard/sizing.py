"""Adaptive batch sizes: learn the memory cost per item, size batches to fit the headroom.

Pure arithmetic on byte counts, so it is tested with exact figures. The policy is TCP's:

- slow start: the first batch is ``min_size`` and no batch is more than twice the one before,
  so the budget holds from the first batch even before anything is known of the items;
- once the cost per item is measured (from each batch's exact peak over the memory it started
  from), a batch is as large as ``SAFETY`` of the headroom allows, capped at the target size
  (``max_size`` when one is given);
- a batch whose peak came near the limit halves the next one at once, unless it cost what was
  measured (a batch sized to the headroom by a known cost peaks near the limit by design when
  the job starts at over half the limit; halving it would halve every other batch).
"""

from __future__ import annotations

import collections
from typing import Optional

#: Share of the headroom a batch may plan to use; the rest absorbs items costlier than measured.
SAFETY = 0.8
#: A batch peaking above this share of the limit halves the next batch...
NEAR_LIMIT = 0.9
#: ... unless its exact cost per item was at most this much above the one it was planned with.
AS_PLANNED = 1.1
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
        self._exact_max = 0  # the largest batch whose peak was measured exactly

    @property
    def cost_per_item(self) -> Optional[float]:
        """Bytes one item adds to the peak, from recent batches; None until measured."""
        return max(self._costs) if self._costs else None

    def size_for(self, rss: int, limit: int) -> int:
        """The size :meth:`next_size` would choose, without choosing it."""
        headroom = limit - rss
        grow = self.min_size if self.last == 0 else min(self.cap, 2 * self.last)
        cost = self.cost_per_item
        size = grow if cost is None else min(grow, int(SAFETY * headroom / cost))
        if self._halve:
            size = min(size, self.last // 2)
        if headroom <= 0:
            size = self.min_size
        return max(self.min_size, min(size, self.cap))

    def hold_back(self) -> None:
        """Make the next batch at most half the last (memory pressure: the kernel reclaims)."""
        self._halve = True

    def next_size(self, rss: int, limit: int) -> int:
        """The size of the next batch for ``rss`` bytes in use now under a ``limit``."""
        self.last = self.size_for(rss, limit)
        self._halve = False
        return self.last

    def needs_exact_peak(self, size: int, rss: int, limit: int) -> bool:
        """Whether the next batch must be measured exactly (the kernel's mark, ~100 µs).

        It must when the batch is larger than any measured exactly so far, on every
        ``RELEARN``-th batch, and near the limit: whenever the batch could use a quarter of the
        headroom at the cost measured (or, with no cost seen yet, above ``NEAR_LIMIT`` of the
        limit). A cheap measurement (sampled readings) misses spikes; with the batch planned at
        four times less than the headroom, a cost underestimated even fourfold cannot break the
        ceiling. A larger batch is where a cost is underestimated most: in CI, a first item of
        200 KB landed on free memory already resident and measured 4 KB; unmeasured, slow start
        then doubled to 256 items of 200 KB under 40 MB of headroom.
        """
        cost = self.cost_per_item
        if size > self._exact_max or self._cheap >= RELEARN - 1:
            exact = True
        elif cost is None:  # batches of this size were measured and showed no cost
            exact = rss > NEAR_LIMIT * limit
        else:
            exact = 4 * size * cost >= limit - rss
        if exact:
            self._cheap = 0
            return True
        self._cheap += 1
        return False

    def learn(
        self, size: int, start_rss: int, peak_rss: int, limit: int, exact: bool = True
    ) -> None:
        """Record a finished batch of ``size`` items that peaked at ``peak_rss``. Only exact
        peaks teach the cost per item; a peak near the limit halves the next batch unless the
        batch cost what it was planned with."""
        planned = self.cost_per_item
        used = max(0, peak_rss - start_rss)
        if size > 0 and exact:
            self._exact_max = max(self._exact_max, size)
            if used > 0:  # nothing seen is no cost learned: the items may have reused free memory
                self._costs.append(used / size)
        as_planned = exact and planned is not None and used <= AS_PLANNED * planned * size
        if peak_rss > NEAR_LIMIT * limit and not as_planned:
            self._halve = True
