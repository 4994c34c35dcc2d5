"""Adaptive batch sizes: fit what a batch costs in memory, size batches to fit the headroom.

Pure arithmetic on byte counts, so it is tested with exact figures (the pace, which caps sizes
by their time per item, is :mod:`.pace`). The policy is TCP's:

- slow start: the first batch is ``min_size`` and no batch is more than twice the one before,
  so the budget holds from the first batch even before anything is known of the items;
- once a cost is measured (from exact peaks), a batch is as large as its planned peak fits in
  ``SAFETY`` of the room above the floor, capped at the target size (``max_size`` when one is
  given); past the largest batch measured it grows as that batch's cost, all of it counted per
  item, allows (and, once ``SETTLE`` batches were measured, at least ``STEP`` further);
- a batch whose peak came near the limit halves the next one at once, unless it cost what was
  planned (a batch sized to the headroom peaks near the limit by design).

The cost model is the one real workloads need (an embedding model's batch costs much the same
for 8 texts as for 32, and its memory swings by about 100 MB whatever the size):

- **the floor**, the memory a batch cannot reuse. An allocator keeps memory a batch freed, and
  the next batch reuses it: starts swing up and down while peaks do not. Memory seen to come
  back down (the largest drop between recent starts) counts as reusable, down to the lowest
  recent start; memory that only went up (results the job keeps, a store's growing index: a
  ratchet) does not, so it counts once, in the start, apart from the batch's own peak.
- **a line**, a fixed cost plus a cost per item, fitted by least squares on the exact peaks
  over the floor of the last ``WINDOW`` batches. It is exact where the batches were (it goes
  through their mean), so batches of much the same size need no slope to be sized well. The
  loop's first batch, which also pays what a first call pays once (thread pools, kernels), is
  left out once later batches show a cost. The costliest batch since memory was last given
  back stays in the fit past the window: the batches after it reuse what it faulted, and
  alone they would teach a cost near nothing.
- **the noise**: the largest ratio of a batch's peak to the line, over the same batches. A
  batch is planned at the line times that ratio: the worst seen. A few draws rarely hold the
  worst: while fewer than ``FEW`` batches are fitted on sizes that tell a fixed cost, the ratio is
  at least 1 plus ``FEW_DEVIATIONS`` standard deviations of their ratios (at most ``FEW_EXCESS``
  times the largest ratio's excess).
- **no flat cost trusted past what was seen**: a batch larger than any measured is planned at
  the largest one's cost per item (all of its planned cost counted per item; while fewer than
  ``SETTLE`` batches were measured, times the noise over the median ratio), so a line that
  read a cost as flat cannot grow batches faster than their peaks show. Once ``SETTLE`` were,
  a batch may step ``STEP`` past the largest along the line, as far as the line raised by
  ``STEP_ERRORS`` of its standard error there fits: a line fitted on sizes close together, or
  on noisy peaks, is least sure past its end (least squares' error of the mean at a size,
  relative, from the ratios' deviation; nil for exact peaks).

Only a loop alone in its reading (no other loop in the process, no process tree) reuses
memory and splits its cost in two: with others, another loop's batch is in every reading, and
all of a batch's cost counts per item.
"""

from __future__ import annotations

import collections
import math
from typing import Optional

from .pace import Pace

#: Share of the room a batch may plan to use; the rest absorbs batches costlier than measured.
SAFETY = 0.8
#: Exact batches after which the line is trusted a step past the largest batch measured.
SETTLE = 16
#: A batch peaking above this share of the limit halves the next batch...
NEAR_LIMIT = 0.9
#: ... unless it peaked at most this much above its plan.
AS_PLANNED = 1.1
#: Exact batches the line and the noise are fitted on; starts the floor is read from.
WINDOW = 32
STARTS = WINDOW
#: Past the largest batch measured, the line is followed this much further at a time...
STEP = 1.25
#: ... where the line, this many of its standard errors higher, still fits.
STEP_ERRORS = 1.0
#: While fewer batches than this are fitted, the noise is at least ...
FEW = 24
#: ... this many standard deviations of their ratios to the line over it, but no more than
#: this many times the largest ratio's excess over the line: a deviation that cheap batches
#: swelled (a loop that stopped sharing its reading, whose last batches had reused memory the
#: other loop freed) says nothing of how costly a batch can be.
FEW_DEVIATIONS = 2.0
FEW_EXCESS = 3.0
#: Far from the limit, one batch in this many is still measured exactly, to keep learning.
RELEARN = 8


class BatchSizer:
    """Chooses the next batch size from the memory now, the limit and what batches cost."""

    def __init__(self, target: int, min_size: int = 1, max_size: Optional[int] = None) -> None:
        self.min_size = min_size
        self.cap = max(max_size or target, min_size)
        self.last = 0
        self.alone = True  # see share()
        self._starts: collections.deque[int] = collections.deque(maxlen=STARTS)
        self._low = self._high = self._swing = 0  # lowest and highest start, largest drop
        # (size, bytes over the floor at the peak, whether it was the loop's first batch)
        self._peaks: collections.deque[tuple[int, int, bool]] = collections.deque(maxlen=WINDOW)
        self._costliest: Optional[tuple[int, int, bool]] = None  # see _fit
        self._line: Optional[tuple[float, float]] = None  # (fixed, per item), noise included
        self._measured = 0  # batches measured exactly
        self._spread = False  # whether the sizes seen tell a fixed cost from one per item
        self._reach = 1.0
        # the line's error: (relative standard deviation, batches, mean size, sum of squares)
        self._error = (0.0, 1, 0.0, 0.0)
        self._halve = False
        self._cheap = 0
        self._exact_max = 0  # the largest batch whose peak was measured exactly
        self._first = min_size  # the first batch's size: see start_at()
        self.pace = Pace()

    def start_at(self, size: int) -> None:
        """Make the first batch ``size`` (within the bounds) rather than ``min_size``: a loop
        resumed after a kill starts at half the batch the kill interrupted."""
        self._first = max(self.min_size, min(size, self.cap))

    def share(self, alone: bool) -> None:
        """Say whether this loop is the only one reading its memory. Alone, its starts swing
        with its own batches only; with others, another loop's batch is in every reading and
        no memory to reuse. When that changes, what the window learned no longer holds: it
        starts again from the last batch measured."""
        if alone == self.alone:
            return
        self.alone = alone
        self._starts.clear()
        self._costliest = None
        if self._peaks:
            size, used, _ = self._peaks[-1]
            self._peaks.clear()
            self._peaks.append((size, used, False))
            self._fit()

    def released(self) -> None:
        """Memory went back to the system between batches (a cleanup trimmed what the allocator
        kept): the starts before it no longer tell what a batch can reuse, and the drop across
        the cleanup is none a batch reuses. The floor learns again from the next start. (Read
        as reusable, trims of 63 and 85 MB let the real model's next batch double into room that
        was not there: 6 and 20 MB over the ceiling.) The costliest batch is forgotten too (see
        :meth:`_fit`): what it faulted, the allocator no longer keeps, and the batches after the
        trim fault again what they need, and show it."""
        self._starts.clear()
        self._low = self._high = self._swing = 0
        self._costliest = None

    # -- the cost model
    @property
    def cost_per_item(self) -> Optional[float]:
        """Bytes one more item is planned to add to a batch's peak; None until one showed."""
        return None if self._line is None else self._line[1]

    @property
    def warmed(self) -> bool:
        """Whether a batch after the loop's first (which pays a first call's warm-up) was
        measured exactly."""
        return self._measured > 1

    @property
    def fixed_cost(self) -> Optional[float]:
        """Bytes a batch is planned to add over the floor whatever its size; None until known."""
        return None if self._line is None else self._line[0]

    def floor(self, rss: int) -> int:
        """What a batch starting at ``rss`` cannot reuse: ``rss`` less the largest drop seen
        between recent starts (and no lower than the lowest of them); ``rss`` itself unless the
        loop is :attr:`alone`."""
        if not self.alone or not self._starts or rss <= self._low:
            return rss
        return max(self._low, rss - max(0, self._swing, self._high - rss))

    def predict(self, size: int) -> Optional[float]:
        """Bytes a batch of ``size`` is planned to peak at over the floor; None until known."""
        if self._line is None:
            return None
        fixed, slope = self._line
        return max(fixed + slope * size, self._per_item() * size)

    def need(self, size: int, rss: int) -> int:
        """Bytes a batch of ``size`` is planned to add over ``rss`` at its peak (0 while no
        cost is known, or when it fits in memory the allocator kept)."""
        peak = self.predict(size)
        return 0 if peak is None else max(0, int(self.floor(rss) + peak - rss))

    def _per_item(self) -> float:
        """Past the largest batch measured, all of its planned cost counts per item."""
        assert self._line is not None
        fixed, slope = self._line
        return fixed / max(1, self._exact_max) + slope

    def _fit(self) -> None:
        points = [(n, u) for n, u, first in self._peaks if not first]
        if self._costliest is not None and self._costliest not in self._peaks:
            # The costliest batch since memory was last given back (released) stays when the
            # window has moved past it. The allocator keeps what it faulted, and the batches
            # after it reuse that and add next to nothing: read alone, they fall to no cost, and
            # the next batch that outgrows what the allocator kept pays for the rest at once
            # (the real model, 300 passages at 250 MB: a line fallen to 0.2 MB a passage, then a
            # batch of 16 planned to peak at 704.5 MB peaked at 769.7, over 748.5).
            points.append(self._costliest[:2])
        if not points:  # the first batch alone: its warm-up is no cost once others show one
            points = [(n, u) for n, u, _ in self._peaks]
        count = len(points)
        sn = su = snn = snu = 0.0
        smallest = largest = points[0][0]
        for n, u in points:
            sn += n
            su += u
            snn += n * n
            snu += n * u
            smallest, largest = min(smallest, n), max(largest, n)
        mean_n, mean_u = sn / count, su / count
        var = snn - sn * mean_n
        self._spread = largest >= 1.5 * smallest
        slope = (snu - sn * mean_u) / var if var > 0 else 0.0
        fixed = mean_u - slope * mean_n
        if not self.alone or not self._spread:
            # One size (or sizes too close) tells no fixed cost; with others' batches in the
            # readings, a cost that does not follow this loop's size may be theirs: all of the
            # cost counts per item.
            fixed, slope = 0.0, mean_u / mean_n
        elif slope < 0:  # flat, within the noise (the larger batches' cost per item caps it)
            fixed, slope = mean_u, 0.0
        elif fixed < 0:  # no fixed cost shows: per item, through the origin
            fixed, slope = 0.0, snu / snn
        ratios = sorted(u / (v if (v := fixed + slope * n) > 1.0 else 1.0) for n, u in points)
        noise = max(1.0, ratios[-1])
        deviation = 0.0
        if count > 2:
            deviation = math.sqrt(sum((r - 1.0) ** 2 for r in ratios) / (count - 2))
            # A few batches' largest ratio falls short of the worst. Not where all of the cost
            # counts per item: that line is no fit, and its ratios' spread is its misfit (a
            # flat cost read per item at sizes 5 and 6 held the real model to batches of one).
            if count < FEW and self.alone and self._spread:
                swollen = 1.0 + FEW_EXCESS * (noise - 1.0)  # by cheap batches: see FEW_EXCESS
                noise = max(noise, min(1.0 + FEW_DEVIATIONS * deviation, swollen))
        self._error = (deviation, count, mean_n, var)
        median = (
            ratios[count // 2] if count % 2 else (ratios[count // 2 - 1] + ratios[count // 2]) / 2
        )
        self._reach = min(2.0, max(1.0, noise / max(median, 1e-9)))
        self._line = fixed * noise, slope * noise

    def _upper(self, size: int) -> float:
        """The line at ``size`` raised by ``STEP_ERRORS`` of its standard error there: a line
        fitted on sizes close together, or on noisy peaks, is least sure past its end."""
        assert self._line is not None
        fixed, slope = self._line
        deviation, count, mean_n, sxx = self._error
        if deviation == 0.0:
            return fixed + slope * size
        if sxx <= 0.0:
            return math.inf
        error = deviation * math.sqrt(1 / count + (size - mean_n) ** 2 / sxx)
        return (fixed + slope * size) * (1.0 + STEP_ERRORS * error)

    def _step(self, room: float) -> int:
        """The largest size up to ``STEP`` past the largest measured whose :meth:`_upper` fits
        ``room`` (the largest measured when none does)."""
        low, high = self._exact_max, math.ceil(STEP * self._exact_max)
        while low < high:  # low fits (or is the largest measured); high + 1 does not
            middle = (low + high + 1) // 2
            if self._upper(middle) <= room:
                low = middle
            else:
                high = middle - 1
        return low

    # -- sizes
    def size_for(self, rss: int, limit: int) -> int:
        """The size :meth:`next_size` would choose, without choosing it."""
        headroom = limit - rss
        grow = self._first if self.last == 0 else min(self.cap, 2 * self.last)
        size = grow
        if self._line is not None:
            fixed, slope = self._line
            floor = self.floor(rss)
            room = SAFETY * (limit - floor)
            per_item = self._per_item()
            if room < fixed:
                size = 0
            elif slope > 0:
                size = min(grow, int((room - fixed) / slope))
            if size > self._exact_max:  # the line rests on one end: see the module's doc
                if self._measured >= SETTLE:
                    size = min(size, max(int(room / per_item), self._step(room)))
                else:
                    size = min(size, max(self._exact_max, int(room / (per_item * self._reach))))
            if size <= self.min_size and self.alone:
                # Stuck at the smallest size, a fixed cost cannot show: try a larger batch
                # once, if its cost, all of it per item, fits under the limit itself.
                probe = min(grow, math.ceil(1.5 * self.min_size))
                if probe > self._exact_max and floor + probe * per_item <= limit:
                    size = probe
        pace = self.pace.cap()
        if pace is not None:
            size = min(size, max(pace, self.min_size))
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
        ``RELEARN``-th batch, and near the limit: whenever the batch's planned peak over the
        floor is more than a quarter of the room above the floor (or, with no cost seen yet,
        above ``NEAR_LIMIT`` of the limit). A cheap measurement (sampled readings) misses
        spikes; with the batch planned at four times less than the room, a cost underestimated
        even fourfold cannot break the ceiling. A larger batch is where a cost is underestimated
        most: in CI, a first item of 200 KB landed on free memory already resident and measured
        4 KB; unmeasured, slow start then doubled to 256 items of 200 KB under 40 MB of headroom.
        """
        peak = self.predict(size)
        if size > self._exact_max or self._cheap >= RELEARN - 1:
            exact = True
        elif peak is None:  # batches of this size were measured and showed no cost
            exact = rss > NEAR_LIMIT * limit
        else:
            exact = 4 * peak >= limit - self.floor(rss)
        if exact:
            self._cheap = 0
            return True
        self._cheap += 1
        return False

    def learn(
        self,
        size: int,
        start_rss: int,
        peak_rss: int,
        limit: int,
        exact: bool = True,
        seconds: Optional[float] = None,
    ) -> None:
        """Record a finished batch of ``size`` items that started at ``start_rss``, peaked at
        ``peak_rss`` and took ``seconds`` (None: not timed). Every start moves the floor; only
        exact peaks teach the cost; a peak over the limit halves the next batch, and so does one
        near it unless the batch cost what was planned."""
        if seconds is not None:
            self.pace.learn(size, seconds)
        used = max(0, peak_rss - self.floor(start_rss))
        planned = self.predict(size)
        if size > 0 and exact:
            self._exact_max = max(self._exact_max, size)  # one that showed no cost counts too
            self._measured += 1
            if used > 0:  # nothing seen is no cost learned: the items may have reused free memory
                point = (size, used, not self._peaks and not self._starts)
                self._peaks.append(point)
                if not point[2] and (self._costliest is None or used >= self._costliest[1]):
                    self._costliest = point
                self._fit()
        self._starts.append(start_rss)
        high = swing = 0  # the largest drop from a start to a later one
        for start in self._starts:
            if start > high:
                high = start
            elif high - start > swing:
                swing = high - start
        self._low, self._high, self._swing = min(self._starts), high, swing
        as_planned = exact and planned is not None and used <= AS_PLANNED * planned
        if peak_rss > limit or (peak_rss > NEAR_LIMIT * limit and not as_planned):
            self._halve = True  # over the limit, even as planned (a probe, a step past the line)
