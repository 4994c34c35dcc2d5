"""How :class:`~zerorag_guard.LeakProfiler` reads a series of per-round readings: the growth per
round, how straight it is, and whether it is a leak's steady growth or noise."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

from ..monitor.health import linear_fit

#: Growth counts as consistent only with a least-squares fit at least this good...
MIN_R2 = 0.8
#: ... and with at least this share of rounds rising.
MIN_RISING_SHARE = 0.5
#: RSS, the witness of last resort (nothing that allocates counts the growth), must rise in this
#: share of rounds: a leak of fresh pages adds pages in every round, while pages the kernel or a
#: neighbour moves rise in some rounds only (seen in CI: +232 KB per round, rising in 6 of 10
#: rounds, while the C heap's exact count did not move).
MIN_RISING_SHARE_RSS = 0.8


@dataclass(frozen=True)
class Fit:
    """A fit over the measured rounds: growth per iteration, the least-squares R², the share of
    rounds that rose, the growth per iteration over the later half of the rounds, and the readings
    themselves (bytes). The growth is the least-squares slope or, when ``robust`` (RSS and the
    C heap, which move in steps), the Theil-Sen slope: the median of the slopes between every
    two rounds."""

    bytes_per_iteration: float
    r2: float
    rising_share: float
    late_bytes_per_iteration: float
    series: list[int] = field(default_factory=list)
    robust: bool = False


def fit_series(values: Sequence[float], robust: bool = False) -> Fit:
    """Growth per round of ``values`` (one reading per round), over all rounds and over the later
    half, with the least-squares R² and the share of rounds that rose.

    The growth is the least-squares slope or, with ``robust``, the Theil-Sen slope (the median of
    the slopes between every two rounds), which one step in the readings does not move: what
    RSS and the C heap need, as they move by pages, arenas and huge pages.
    """
    points = [(float(i), float(v)) for i, v in enumerate(values)]
    late_points = points[min(len(points) // 2, len(points) - 2) :]  # two points at least
    slope, r2 = linear_fit(points)
    late, _ = linear_fit(late_points)
    if robust:
        slope, late = _theil_sen(points), _theil_sen(late_points)
    rises = sum(1 for a, b in itertools.pairwise(values) if b > a)
    share = rises / (len(values) - 1) if len(values) > 1 else 0.0
    return Fit(
        round(slope, 1),
        round(r2, 3),
        round(share, 3),
        round(late, 1),
        [int(v) for v in values],
        robust,
    )


def _theil_sen(points: Sequence[tuple[float, float]]) -> float:
    slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in itertools.combinations(points, 2)]
    return statistics.median(slopes) if slopes else 0.0


def consistent(
    fit: Optional[Fit], threshold: float, rising_share: float = MIN_RISING_SHARE
) -> bool:
    """Growth at or over ``threshold`` per round, with a good fit (for a robust fit, the median
    slope is the test), rising in at least ``rising_share`` of the rounds, and still going in
    the later half (a cache filling up levels off; a leak does not): not noise."""
    return (
        fit is not None
        and fit.bytes_per_iteration >= threshold
        and (fit.robust or fit.r2 >= MIN_R2)
        and fit.rising_share >= rising_share
        and still_growing(fit, threshold)
    )


def still_growing(fit: Optional[Fit], threshold: float) -> bool:
    """The later half of the rounds still grows by at least half the threshold per round."""
    return fit is not None and fit.late_bytes_per_iteration >= threshold / 2


def native_witness(heap: Optional[Fit], rss: Optional[Fit], threshold: float) -> Optional[Fit]:
    """The fit that shows memory outside Python growing, if one does: the C heap first (exact,
    whatever the pages do), then RSS, which must rise in :data:`MIN_RISING_SHARE_RSS` of the
    rounds."""
    if consistent(heap, threshold):
        return heap
    if consistent(rss, threshold, MIN_RISING_SHARE_RSS):
        return rss
    return None
