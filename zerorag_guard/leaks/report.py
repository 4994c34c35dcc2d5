"""What :class:`~zerorag_guard.LeakProfiler` found: plain data, ``format()`` for people and
``to_dict()`` for tools, and which types and allocation sites grew (from the profiler's rounds).
Kept apart from the profiler so the measuring code stays short."""

from __future__ import annotations

import linecache
import tracemalloc
from dataclasses import asdict, dataclass
from typing import Any, Optional

from .fit import Fit, fit_series

KB = 1024.0


def _kb(value: float) -> str:
    return f"{value / KB:+.1f} KB"


@dataclass(frozen=True)
class TypeGrowth:
    """One type of pympler's summary that grew: ``count_per_iteration`` objects and
    ``bytes_per_iteration`` bytes per iteration; ``count`` and ``size_bytes`` at the last round."""

    name: str
    count_per_iteration: float
    bytes_per_iteration: float
    count: int
    size_bytes: int


@dataclass(frozen=True)
class SiteGrowth:
    """One allocation traceback whose live memory grew. ``site`` is the most recent frame as
    ``file:line``; ``traceback`` the frames that led there, most recent first, the profiler's own
    frames and everything outside them left out."""

    site: str
    traceback: list[str]
    bytes_per_iteration: float
    count_per_iteration: float
    size_bytes: int

    @classmethod
    def from_traceback(
        cls,
        tb: tracemalloc.Traceback,
        bytes_per_iteration: float,
        count_per_iteration: float,
        size_bytes: int,
        own_files: tuple[str, ...],
    ) -> SiteGrowth:
        lines = []
        for frame in reversed(tb):  # most recent first
            if frame.filename in own_files:
                break  # what called the profiler is not where the leak is
            code = linecache.getline(frame.filename, frame.lineno).strip()
            lines.append(f"{frame.filename}:{frame.lineno}" + (f": {code}" if code else ""))
        last = tb[-1]
        return cls(
            f"{last.filename}:{last.lineno}",
            lines[:5],
            bytes_per_iteration,
            count_per_iteration,
            size_bytes,
        )


def growing_types(types: dict[str, Any], rounds: int, floor: float, top: int) -> list[TypeGrowth]:
    """The ``top`` types of the census whose size grew by at least ``floor`` bytes per
    iteration over the first ``rounds`` rounds (each row: count, size, count, size, ...)."""
    if rounds < 2:
        return []
    found = []
    for name, row in types.items():
        count = fit_series(row[0 : 2 * rounds : 2])
        size = fit_series(row[1 : 2 * rounds : 2])
        if size.bytes_per_iteration >= floor and size.series[-1] > size.series[0]:
            found.append(
                TypeGrowth(
                    name,
                    count.bytes_per_iteration,
                    size.bytes_per_iteration,
                    count.series[-1],
                    size.series[-1],
                )
            )
    found.sort(key=lambda t: t.bytes_per_iteration, reverse=True)
    return found[:top]


def growing_sites(
    rounds: list[dict[Any, tuple[int, int]]], floor: float, top: int, own_files: tuple[str, ...]
) -> list[SiteGrowth]:
    """The ``top`` allocation tracebacks whose live size grew by at least ``floor`` bytes per
    iteration over the traced ``rounds`` (each: traceback -> (size, count)), the frames of
    ``own_files`` left out."""
    if len(rounds) < 2:
        return []
    found = []
    for tb in set(rounds[-1]).union(*rounds[:-1]):
        size = fit_series([r.get(tb, (0, 0))[0] for r in rounds])
        count = fit_series([r.get(tb, (0, 0))[1] for r in rounds])
        if size.bytes_per_iteration >= floor and size.series[-1] > size.series[0]:
            found.append((size, count, tb))
    found.sort(key=lambda f: f[0].bytes_per_iteration, reverse=True)
    return [
        SiteGrowth.from_traceback(
            tb, size.bytes_per_iteration, count.bytes_per_iteration, size.series[-1], own_files
        )
        for size, count, tb in found[:top]
    ]


@dataclass(frozen=True)
class LeakReport:
    """The verdict and the evidence.

    ``leaking`` is true when growth per iteration reached the threshold consistently (good fit,
    most rounds rising): in Python memory (the object census and tracemalloc agree: ``source``
    ``"python"``) or, for memory Python cannot see, in the C heap or in RSS (``source``
    ``"native"``). ``growth_bytes_per_iteration`` is the figure the verdict rests on; without a
    leak, the growth per iteration still seen over the later half of the rounds. ``traced``,
    ``objects``, ``rss`` and ``heap`` (bytes ``malloc`` holds) are the fits, None when too few
    rounds were measured or, for ``heap``, where the C library cannot say.
    """

    leaking: bool
    growth_bytes_per_iteration: float
    top_types: list[TypeGrowth]
    top_sites: list[SiteGrowth]
    source: Optional[str]
    traced: Optional[Fit]
    objects: Optional[Fit]
    rss: Optional[Fit]
    heap: Optional[Fit]
    threshold_bytes: float
    rss_threshold_bytes: float
    warmup: int
    iterations: int
    tracemalloc_saw_growth: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, for tools."""
        return asdict(self)

    def format(self) -> str:
        """A few lines for people: the verdict, the figures, then where and what grew."""
        if self.leaking and self.source == "native":
            head = (
                f"LEAK: memory outside Python grows {_kb(self.growth_bytes_per_iteration)} per "
                "iteration: tracemalloc saw nothing growing, so look at C extensions, "
                "native libraries, ctypes/cffi buffers"
            )
        elif self.leaking:
            head = f"LEAK: Python memory grows {_kb(self.growth_bytes_per_iteration)} per iteration"
        else:
            head = (
                f"no leak: growth {_kb(self.growth_bytes_per_iteration)} per iteration, "
                f"below {_kb(self.threshold_bytes)} or not consistent"
            )
        out = [
            head,
            f"  after {self.warmup} warm-up rounds, {self.iterations} measured rounds each of "
            "the census, RSS and tracemalloc",
        ]
        for label, fit in (
            ("tracemalloc", self.traced),
            ("objects", self.objects),
            ("C heap", self.heap),
            ("RSS", self.rss),
        ):
            if fit is not None:
                how = "median slope, " if fit.robust else ""
                out.append(
                    f"  {label:<11} {_kb(fit.bytes_per_iteration)}/iteration "
                    f"({how}R² {fit.r2:.2f}, rising in {fit.rising_share:.0%} of rounds)"
                )
        if self.top_sites:
            out.append("where it was allocated:")
            for s in self.top_sites:
                out.append(
                    f"  {_kb(s.bytes_per_iteration)}/it, {s.count_per_iteration:+.1f} "
                    f"blocks/it at {s.site}"
                )
                out.extend(f"      {line}" for line in s.traceback)
        if self.top_types:
            out.append("what grew (by type):")
            for t in self.top_types:
                out.append(
                    f"  {_kb(t.bytes_per_iteration)}/it, {t.count_per_iteration:+.1f} "
                    f"objects/it  {t.name} (now {t.count} objects, {t.size_bytes} B)"
                )
        return "\n".join(out)
