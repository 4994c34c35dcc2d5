"""The leak profiler: what keeps growing from one iteration to the next, and where it came from.

:class:`LeakProfiler` runs a function (or a ``with`` block whose loop calls
:meth:`~LeakProfiler.step`) for warm-up rounds, so caches and free lists settle, then measures
it in three passes of ``iterations`` rounds each, with a full garbage collection before every
measurement:

1. untraced, the census: live objects by type, in pympler's summary rows (type name, count,
   size);
2. untraced, memory outside Python: the bytes ``malloc`` holds (glibc's ``mallinfo2``, where there
   is one) and RSS (after ``malloc_trim(0)``, so freed heap pages do not hide or fake growth; on
   Linux without the pages of mapped files:
   :func:`~zerorag_guard.memory.probes.anonymous_bytes`);
3. under tracemalloc: the traced bytes still alive, grouped by allocation traceback.

Each figure gets a slope per iteration over its rounds (least squares for Python's figures, the
median slope for RSS and the C heap, which move in steps), with R² and the share of rounds that
rose. The census runs untraced because tracemalloc multiplies the cost of every
allocation by about ten and a census allocates per object (measured: 0.04 s untraced against
0.4 s traced for 190,000 objects). RSS is read in rounds of its own: tracemalloc's tables would
count as growth, and so would the census's, which leaves Python's allocator holding arenas of a
megabyte (measured with 464,000 live objects: RSS up in 1 MB steps in 7 rounds of 10 with a
census in every round, flat in every round without one). Only consistent growth is a leak: a
slope at or over the threshold, a good fit and growth in at least half the rounds, seen by the
census *and* by tracemalloc (or, for memory that Python cannot see, by the C heap or, rising in
8 rounds of 10, by RSS: ``source == "native"``).

RSS alone can miss native growth: a ``malloc`` served from heap pages that are already resident
(free heap the allocator cannot trim, a transparent huge page) adds nothing to it. The bytes in use
that glibc reports count every such allocation, so where they are available they are the first
witness of a native leak.
"""

from __future__ import annotations

import array
import contextlib
import gc
import os
import sys
import tracemalloc
import types
from typing import Any, Callable, Optional

from ..memory.probes import (
    HeapReader,
    MemoryProbe,
    RssReader,
    anonymous_bytes,
    malloc_in_use_bytes,
)
from ..monitor import cleanup
from ..monitor.process import process_monitor
from .fit import Fit, consistent, fit_series, native_witness, still_growing
from .report import LeakReport, SiteGrowth, TypeGrowth, growing_sites, growing_types

__all__ = ["Fit", "LeakProfiler", "LeakReport", "SiteGrowth", "TypeGrowth"]

#: RSS moves in 4 KiB pages and allocator arenas: below this a slope is noise, whatever the caller's
#: threshold for Python memory.
RSS_FLOOR_BYTES = 64 * 1024
_OWN_FILES = (
    tracemalloc.__file__,
    __file__,
    os.path.join(os.path.dirname(__file__), "report.py"),
)


def _anonymous_bytes() -> int:
    return anonymous_bytes() or 0


def _ignored_patterns() -> list[str]:
    patterns = list(_OWN_FILES)
    try:
        import pympler

        patterns.append(os.path.join(os.path.dirname(pympler.__file__), "*"))
    except ImportError:  # pragma: no cover - pympler is a dependency
        pass
    return [*patterns, "<unknown>"]


class LeakProfiler:
    """Finds memory that grows per iteration: ``LeakProfiler().check(fn)`` → :class:`LeakReport`.

    As a context manager, call :meth:`step` at the end of every iteration of the loop; the steps
    are scheduled like :meth:`check`'s calls (``warmup``, then ``iterations`` steps of census,
    ``iterations`` of RSS and C heap, one settling and ``iterations`` traced steps; later steps are
    counted and not measured)::

        with LeakProfiler() as lp:
            for batch in batches:
                ingest(batch)
                lp.step()
        print(lp.report().format())

    ``threshold_bytes`` is the growth per iteration of Python memory that counts as a leak;
    ``rss_threshold_bytes`` the same for memory outside Python, in the C heap or in RSS (default:
    the larger of ``threshold_bytes`` and 64 KiB). ``rss_reader`` and ``heap_reader`` replace the
    RSS and C-heap sources (for tests; a heap reader returning None means "not available");
    ``traceback_limit`` is the number of frames tracemalloc keeps per allocation; ``top`` how many
    types and sites are reported.
    """

    def __init__(
        self,
        warmup: int = 3,
        iterations: int = 10,
        *,
        threshold_bytes: float = 1024,
        rss_threshold_bytes: Optional[float] = None,
        top: int = 10,
        traceback_limit: int = 8,
        rss_reader: Optional[RssReader] = None,
        heap_reader: HeapReader = malloc_in_use_bytes,
    ) -> None:
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup={warmup!r} is not valid: expected a whole number >= 0")
        if not isinstance(iterations, int) or iterations < 2:
            raise ValueError(
                f"iterations={iterations!r} is not valid: expected a whole number "
                ">= 2 (a slope needs at least two measured rounds)"
            )
        if threshold_bytes <= 0:
            raise ValueError(
                f"threshold_bytes={threshold_bytes!r} is not valid: expected bytes "
                "per iteration above 0, e.g. 1024"
            )
        self.warmup = warmup
        self.iterations = iterations
        self.threshold_bytes = float(threshold_bytes)
        self.rss_threshold_bytes = float(
            rss_threshold_bytes
            if rss_threshold_bytes is not None
            else max(threshold_bytes, RSS_FLOOR_BYTES)
        )
        self.top = top
        self.traceback_limit = traceback_limit
        self._rss_reader = rss_reader
        self._heap_reader = heap_reader
        self._report: Optional[LeakReport] = None
        self._reset()

    @property
    def total_steps(self) -> int:
        """Calls (or :meth:`step` calls) a full profile takes: ``warmup + 3 * iterations + 1``."""
        return self.warmup + 3 * self.iterations + 1

    def _reset(self) -> None:
        # Every buffer that lives across the census is allocated here at its final size, and
        # excluded from the census by identity (see _own_ids), so it never counts as growth.
        n = self.iterations + 1
        self._steps = 0
        self._rss = array.array("d", bytes(8 * n))
        self._heap = array.array("d", bytes(8 * n))
        self._heap_seen = True
        self._objects = array.array("d", bytes(8 * n))
        self._types: dict[str, array.array[float]] = {}
        self._traced = array.array("d", bytes(8 * n))
        self._sites: list[dict[tracemalloc.Traceback, tuple[int, int]]] = []
        self._we_started_tracing = False
        self._probe: Optional[MemoryProbe] = None
        self._filters: list[tracemalloc.Filter] = []
        self._active = False
        self._held = contextlib.ExitStack()

    # -- the two entry points ------------------------------------------------------------------
    def check(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> LeakReport:
        """Call ``fn(*args, **kwargs)`` :attr:`total_steps` times and report what grew."""
        with self:
            for _ in range(self.total_steps):
                fn(*args, **kwargs)
                self.step()
        return self.report()

    def __enter__(self) -> LeakProfiler:
        if self._active:
            raise RuntimeError("this LeakProfiler is already profiling; use a second one")
        self._reset()
        self._report = None
        self._active = True
        import pympler.summary  # noqa: F401  # imported before the first census, not during

        monitor = process_monitor()
        if monitor is not None:
            # Its sampler fills a bounded history: growth that would read as a leak here.
            self._held.enter_context(monitor.paused())

        # RSS without the pages of mapped files where the kernel tells them apart (see
        # anonymous_bytes); statm's RSS elsewhere.
        reader = self._rss_reader
        if reader is None and anonymous_bytes() is not None:
            reader = _anonymous_bytes
        self._probe = (
            MemoryProbe(reader) if reader is not None else MemoryProbe(use_kernel_peak=False)
        )
        # The census warms up like the function: its first runs create what later ones reuse.
        # One census here and one after every warm-up round, all thrown away.
        self._census()
        if self.warmup == 0:
            self._measure_objects(0)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._report = self._build_report()
        finally:
            self._finish()

    def step(self) -> None:
        """Mark the end of one iteration; measures when the schedule says so."""
        if not self._active:
            raise RuntimeError("LeakProfiler.step() called outside its `with` block")
        self._steps += 1
        k, w, n = self._steps, self.warmup, self.iterations
        # Round n of the census and round 0 of RSS share a step: RSS is read after that census,
        # and no census runs between its rounds.
        if k < w:
            self._census()  # the profiler warms up too: see __enter__
        elif k <= w + n:
            self._measure_objects(k - w)
            if k == w + n:
                self._measure_outside_python(0)
        elif k <= w + 2 * n:
            self._measure_outside_python(k - w - n)
            if k == w + 2 * n:
                self._start_tracing()
        elif k <= w + 3 * n + 1:
            self._measure_traced(k - w - 2 * n - 1)
            if k == w + 3 * n + 1:
                self._stop_tracing()

    def report(self) -> LeakReport:
        """The report: built when the ``with`` block ends, or from the rounds measured so far."""
        if self._report is None:
            self._report = self._build_report()
        return self._report

    # -- measurements --------------------------------------------------------------------------
    def _measure_objects(self, i: int) -> None:
        gc.collect()
        total = 0
        for name, (count, size) in self._census().items():
            row = self._types.get(name)
            if row is None:
                row = self._types[name] = array.array("d", bytes(16 * (self.iterations + 1)))
            row[2 * i] = count
            row[2 * i + 1] = size
            total += size
        self._objects[i] = total

    def _measure_outside_python(self, i: int) -> None:
        gc.collect()
        if cleanup._malloc_trim is not None:
            cleanup._malloc_trim(0)  # hand freed heap pages back so RSS shows live memory only
        assert self._probe is not None
        self._rss[i] = self._probe.rss_bytes()
        heap = self._heap_reader()
        if heap is None:
            self._heap_seen = False
        else:
            self._heap[i] = heap

    def _own_ids(self) -> set[int]:
        own = {
            id(self._rss),
            id(self._heap),
            id(self._objects),
            id(self._traced),
            id(self._types),
            id(self._sites),
        }
        own.update(map(id, self._types))
        own.update(map(id, self._types.values()))
        return own

    def _census(self) -> dict[str, tuple[int, int]]:
        """Live objects by type name, as pympler's summary rows: gc-tracked objects plus the
        untracked ones they refer to (str, int, bytes...), each counted once, frames and this
        profiler's own buffers left out."""
        from pympler import summary

        objs = gc.get_objects()
        loose = {id(r): r for r in gc.get_referents(*objs) if not gc.is_tracked(r)}
        skip = self._own_ids()
        skip.update((id(objs), id(loose)))
        groups: dict[type, list[Any]] = {}
        sizeof = sys.getsizeof
        for seq in (objs, loose.values()):
            for o in seq:
                t = type(o)
                if t is types.FrameType or id(o) in skip:
                    continue
                g = groups.get(t)
                if g is None:
                    groups[t] = g = [0, 0, o]
                g[0] += 1
                g[1] += sizeof(o)
        rows: dict[str, tuple[int, int]] = {}
        for g in groups.values():
            # pympler's own name for the type: module-qualified, addresses removed.
            name = summary.summarize([g[2]])[0][0]
            count, size = rows.get(name, (0, 0))
            rows[name] = (count + g[0], size + g[1])
        return rows

    def _start_tracing(self) -> None:
        self._filters = [tracemalloc.Filter(False, p) for p in _ignored_patterns()]
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.traceback_limit)
            self._we_started_tracing = True

    def _stop_tracing(self) -> None:
        if self._we_started_tracing and tracemalloc.is_tracing():
            tracemalloc.stop()
        self._we_started_tracing = False

    def _measure_traced(self, i: int) -> None:
        if i == 0:
            return  # the settling step: what it allocates replaces untraced objects
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(self._filters)
        # The filters look at the most recent frame only; what tracemalloc's own code caches on
        # its first calls (ABC checks, fnmatch patterns) has tracemalloc.py deeper in the stack.
        sites = {
            s.traceback: (s.size, s.count)
            for s in snapshot.statistics("traceback")
            if not any(f.filename == tracemalloc.__file__ for f in s.traceback)
        }
        self._sites.append(sites)
        self._traced[i - 1] = sum(size for size, _ in sites.values())

    def _finish(self) -> None:
        self._held.close()
        self._stop_tracing()
        if self._probe is not None:
            self._probe.close()
        self._probe = None
        self._active = False
        # Drop every buffer so a later run does not see this one's objects go away or stay.
        self._types = {}
        self._sites = []

    # -- the report ----------------------------------------------------------------------------
    @property
    def _floor(self) -> float:
        # Types and sites growing by less than a sixteenth of the threshold are noise to a reader.
        return self.threshold_bytes / 16

    def _build_report(self) -> LeakReport:
        w, n = self.warmup, self.iterations
        census_rounds = max(0, min(self._steps - w + 1, n + 1))
        outside_rounds = max(0, min(self._steps - w - n + 1, n + 1))
        rss = fit_series(self._rss[:outside_rounds], robust=True) if outside_rounds >= 2 else None
        heap = (
            fit_series(self._heap[:outside_rounds], robust=True)
            if outside_rounds >= 2 and self._heap_seen
            else None
        )
        objects = fit_series(self._objects[:census_rounds]) if census_rounds >= 2 else None
        traced = fit_series(self._traced[: len(self._sites)]) if len(self._sites) >= 2 else None
        if traced is None:
            python = consistent(objects, self.threshold_bytes)
        else:
            # Each view corroborates the other: tracemalloc alone would count objects that replace
            # untraced ones as growth, the census alone cannot say where they came from.
            python = (
                consistent(traced, self.threshold_bytes)
                and still_growing(objects, self.threshold_bytes)
            ) or (
                consistent(objects, self.threshold_bytes)
                and still_growing(traced, self.threshold_bytes)
            )
        native_fit = native_witness(heap, rss, self.rss_threshold_bytes)
        native = not python and native_fit is not None
        best = traced or objects
        if python and best is not None:
            growth = best.bytes_per_iteration
        elif native_fit is not None:  # python implies a fit, so this is the native case
            growth = native_fit.bytes_per_iteration
        else:  # what Python memory still grows by at the end, by the view that sees least
            growth = min((f.late_bytes_per_iteration for f in (traced, objects) if f), default=0.0)
        return LeakReport(
            leaking=python or native,
            growth_bytes_per_iteration=growth,
            top_types=growing_types(self._types, census_rounds, self._floor, self.top),
            top_sites=growing_sites(self._sites, self._floor, self.top, _OWN_FILES),
            source="python" if python else "native" if native else None,
            traced=traced,
            objects=objects,
            rss=rss,
            heap=heap,
            threshold_bytes=self.threshold_bytes,
            rss_threshold_bytes=self.rss_threshold_bytes,
            warmup=w,
            iterations=n,
            tracemalloc_saw_growth=still_growing(traced, self.threshold_bytes),
        )
