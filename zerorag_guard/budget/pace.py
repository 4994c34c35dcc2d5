"""How long batches take per item by size: the largest size worth its time.

Time counts too, within what memory allows: a batch's items may cost more each in a larger
batch (an embedding model pads every text of a call to its longest, so a call of 32 is slower
per text than four of 8). Each finished batch's seconds per item are kept by size class (sizes
1, 2-3, 4-7, 8-15, ...); a class's pace is the faster of its last two batches. A class slower
per item than the fastest by more than ``PACE_SLACK`` on both is not grown into: batches go
back to the size that set the pace of the class below it (the class's other sizes were not
measured at that pace: the real model's batches of 16 ran at 41 ms a passage and its batches
of 30-31, in the same class, at 48-54, and a cap at the top of the class ran there). Once in
``PACE_RETRY`` batches a slower class is tried again at its smallest size, and one batch as
fast as the rest lifts the cap, so slow readings do not cap a loop for good. One slower batch
of the largest class tried holds growth at its size until the next batch tells (slow start
would otherwise have doubled twice past it before the pace could: the real model's batches of
32-45 cost 10-17% more per text than batches of 8, and a job of 150 passages spent 135 of them
there). One batch never caps below its class: on a loaded machine one batch of the real model
took 1.4 times as long per passage as the one before it, and the next ones were not slower.
Batches shorter than ``PACE_MIN_SECONDS`` teach no pace (their time is the loop's own overhead
and the clock's noise).
"""

from __future__ import annotations

import collections
from typing import Optional

#: A size class this much slower per item than the fastest is not grown into...
PACE_SLACK = 1.1
#: ... except one batch in this many, which measures it again.
PACE_RETRY = 16
#: Batches quicker than this teach no pace.
PACE_MIN_SECONDS = 0.005
#: A class's pace is the fastest of its last this many batches.
PACE_SAMPLES = 2


class Pace:
    """Seconds per item by size class (``size.bit_length()``): the largest size worth its time."""

    def __init__(self) -> None:
        # per class: its last batches' (seconds per item, size)
        self._classes: dict[int, collections.deque[tuple[float, int]]] = {}
        self._batches = 0

    def learn(self, size: int, seconds: float) -> None:
        """A batch of ``size`` items took ``seconds`` (from handed out to the next request)."""
        self._batches += 1
        if size > 0 and seconds >= PACE_MIN_SECONDS:
            recent = self._classes.setdefault(
                size.bit_length(), collections.deque(maxlen=PACE_SAMPLES)
            )
            recent.append((seconds / size, size))

    def cap(self) -> Optional[int]:
        """The size that set the pace of the class below the smallest slower one (see the
        module's doc), or, every ``PACE_RETRY``-th batch, the slower class's smallest size;
        else, when the largest class tried was slower on its one batch, that batch's size (grow
        no further until a second batch tells); None when no class is slower.

        One batch proves little: against a persistent store, a write of 1 item took 50 ms and
        one of 2 took 120 ms once; read as a pace, it held 20,000 items to batches of one."""
        paces = {c: min(recent) for c, recent in self._classes.items()}
        if len(paces) < 2:
            return None
        fastest = min(paces, key=paces.__getitem__)
        best = paces[fastest][0]
        slow = [
            c
            for c, (pace, _) in paces.items()
            if c > fastest and len(self._classes[c]) > 1 and pace > PACE_SLACK * best
        ]
        if slow:
            first = min(slow)
            if self._batches % PACE_RETRY == 0:
                return 1 << (first - 1)  # the slower class's smallest size measures it again
            return paces[max(c for c in paces if c < first)][1]
        top = max(paces)
        if paces[top][0] > PACE_SLACK * best:
            # The largest class tried was slower on its one batch: grow no further until a
            # second batch of it says whether it is (slow start would double past it first).
            return paces[top][1]
        return None
