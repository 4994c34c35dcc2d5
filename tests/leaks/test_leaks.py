"""The leak profiler, both sides: real leaks are found and placed, warming caches are not leaks."""

from __future__ import annotations

import collections
import ctypes
import functools
import json
import logging
import mmap
import os
import re
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from zerorag_guard import LeakProfiler, LeakReport
from zerorag_guard.config import GuardConfig
from zerorag_guard.memory import probes
from zerorag_guard.memory.limits import EffectiveLimit
from zerorag_guard.memory.probes import MB, MemoryProbe
from zerorag_guard.monitor import health
from zerorag_guard.monitor.cleanup import _malloc_trim
from zerorag_guard.monitor.monitor import MemoryMonitor

KB = 1024
_KEPT: list[Any] = []


def leak_10kb() -> None:
    _KEPT.append(bytearray(10 * KB))  # the leaking line


def _line_of(marker: str) -> str:
    for number, line in enumerate(Path(__file__).read_text().splitlines(), start=1):
        if marker in line and "_line_of" not in line:
            return f"{__file__}:{number}"
    raise AssertionError(marker)


@pytest.fixture(autouse=True)
def _drop_kept() -> Iterator[None]:
    yield
    _KEPT.clear()


# -- the leaking side ---------------------------------------------------------------------------
def test_10kb_leak_is_found_with_its_line_and_type() -> None:
    report = LeakProfiler(warmup=3, iterations=10).check(leak_10kb)

    assert report.leaking and report.source == "python"
    assert 9 * KB <= report.growth_bytes_per_iteration <= 12 * KB
    assert report.top_sites[0].site == _line_of("# the leaking line")
    assert "_KEPT.append(bytearray(10 * KB))" in report.top_sites[0].traceback[0]
    assert "bytearray" in [t.name for t in report.top_types[:3]]
    bytearray_growth = next(t for t in report.top_types if t.name == "bytearray")
    assert bytearray_growth.count_per_iteration == pytest.approx(1.0, abs=0.05)
    assert "LEAK" in report.format() and "bytearray" in report.format()
    json.dumps(report.to_dict())  # tools get plain data


def test_threshold_is_the_callers() -> None:
    report = LeakProfiler(iterations=5, threshold_bytes=50 * KB).check(leak_10kb)
    assert not report.leaking
    assert report.growth_bytes_per_iteration >= 9 * KB  # measured all the same


libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]


def leak_100kb_in_c() -> None:
    pointer = libc.malloc(100 * KB)
    libc.memset(pointer, 1, 100 * KB)  # written, so the pages are resident; never freed


def leak_100kb_of_pages() -> None:
    # Pages mapped straight from the kernel: no allocator counts them, only RSS sees them.
    pointer = libc.mmap(
        None,
        100 * KB,
        mmap.PROT_READ | mmap.PROT_WRITE,
        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
        -1,
        0,
    )
    libc.memset(pointer, 1, 100 * KB)


def _assert_native(report: LeakReport) -> None:
    assert report.leaking and report.source == "native", report.format()
    assert 85 * KB <= report.growth_bytes_per_iteration <= 130 * KB, (report.format(), report.rss)
    assert not report.tracemalloc_saw_growth and report.top_sites == []
    assert "tracemalloc saw nothing" in report.format()


@pytest.mark.skipif(probes.mallinfo2() is None, reason="needs glibc 2.33+ (mallinfo2)")
def test_c_malloc_leak_shows_in_the_c_heap() -> None:
    report = LeakProfiler(iterations=10).check(leak_100kb_in_c)

    _assert_native(report)
    # The allocator's count is exact: 100 KiB and its chunk header per call, in every round
    # (RSS may see less: the chunks can land on heap pages that are already resident).
    assert report.heap is not None and report.heap.r2 >= 0.99
    assert report.heap.late_bytes_per_iteration == pytest.approx(100 * KB, abs=1 * KB)
    assert "C heap" in report.format()


@pytest.mark.skipif(_malloc_trim is None, reason="needs glibc (malloc_trim) and /proc RSS")
def test_native_leak_no_allocator_counts_shows_through_rss() -> None:
    report = LeakProfiler(iterations=10).check(leak_100kb_of_pages)

    _assert_native(report)
    assert report.rss is not None and 85 * KB <= report.rss.bytes_per_iteration <= 130 * KB
    assert report.heap is None or report.heap.late_bytes_per_iteration < 1 * KB


def test_without_a_heap_count_the_c_leak_still_shows_through_rss() -> None:
    # As on musl or an older glibc: no mallinfo2, RSS is the only witness.
    report = LeakProfiler(iterations=10, heap_reader=lambda: None).check(leak_100kb_of_pages)
    _assert_native(report)
    assert report.heap is None and report.to_dict()["heap"] is None


def _fed(readings: list[int]) -> Callable[[], int]:
    """A reader that returns ``readings`` in turn, one per measured untraced round."""
    it = iter(readings)
    return lambda: next(it)


def _native_report(rss_kb: list[int], heap_kb: list[int]) -> LeakReport:
    profiler = LeakProfiler(
        iterations=10,
        rss_reader=_fed([int(v * KB) for v in rss_kb]),
        heap_reader=_fed([int(v * KB) for v in heap_kb]),
    )
    return profiler.check(lambda: None)


def _steady(per_round: int, step_at: int, step: int) -> list[int]:
    return [50_000 + per_round * i + (step if i >= step_at else 0) for i in range(11)]


def test_a_one_off_step_neither_makes_nor_hides_a_native_leak() -> None:
    # RSS takes an arena or a huge page in one round: the median slope does not move.
    flat_heap = [10_000] * 11
    leak = _native_report(_steady(100, step_at=2, step=2048), flat_heap)
    assert leak.leaking and leak.source == "native"
    assert leak.growth_bytes_per_iteration == pytest.approx(100 * KB, rel=0.01)
    assert leak.rss is not None and leak.rss.robust and leak.rss.r2 < 0.8  # least squares fails

    no_leak = _native_report(_steady(0, step_at=4, step=1024), flat_heap)
    assert not no_leak.leaking, no_leak.format()

    # The C heap is read first: exact growth there, however RSS moved.
    heap_leak = _native_report([50_000] * 11, _steady(100, step_at=3, step=0))
    assert heap_leak.leaking and heap_leak.heap is not None
    assert heap_leak.growth_bytes_per_iteration == pytest.approx(100 * KB, rel=0.01)
    assert "median slope" in heap_leak.format()


def test_rss_that_rises_in_some_rounds_only_is_no_leak() -> None:
    # What a CI run saw for a function that keeps nothing: RSS up 232 KB a round by the median
    # slope, rising in 6 rounds of 10, the C heap flat. A leak of fresh pages rises every round.
    steps = [464, 0, 464, 0, 232, 0, 464, 232, 0, 464]
    rss = [50_000 + sum(steps[:i]) for i in range(11)]
    flat_heap = [10_000] * 11
    report = _native_report(rss, flat_heap)
    assert report.rss is not None and report.rss.rising_share == 0.6
    assert report.rss.bytes_per_iteration >= 200 * KB and report.rss.late_bytes_per_iteration > 0
    assert not report.leaking, report.format()
    every_round = [50_000 + 232 * i for i in range(11)]
    assert _native_report(every_round, flat_heap).source == "native"


def test_rss_is_read_in_rounds_without_a_census(monkeypatch: pytest.MonkeyPatch) -> None:
    # With 464,000 live objects (torch, chromadb, sentence-transformers imported), each census left
    # Python's allocator holding another arena of a megabyte in 7 rounds of 10: a native "leak"
    # of a function that keeps nothing when RSS was read in the census's rounds. Here every
    # census keeps 1 MB for good; RSS must not see it grow.
    arenas = [0]
    census = LeakProfiler._census

    def census_that_keeps_an_arena(self: LeakProfiler) -> dict[str, tuple[int, int]]:
        arenas[0] += 1024 * KB
        return census(self)

    monkeypatch.setattr(LeakProfiler, "_census", census_that_keeps_an_arena)
    profiler = LeakProfiler(
        warmup=3,
        iterations=10,
        rss_reader=lambda: 50_000 * KB + arenas[0],
        heap_reader=lambda: 10_000 * KB,
    )
    report = profiler.check(lambda: None)
    assert arenas[0] == 14 * 1024 * KB  # the census ran: one before, 2 in the warm-up, 11 measured
    assert report.rss is not None and report.rss.series == [50_000 * KB + arenas[0]] * 11
    assert not report.leaking, report.format()
    assert profiler.total_steps == 3 + 3 * 10 + 1


# -- the non-leaking side -----------------------------------------------------------------------
@functools.lru_cache(maxsize=1024)
def _square(n: int) -> int:
    return n * n


def warm_lru_cache() -> None:
    sum(_square(i) for i in range(200))


def compiled_regex() -> None:
    re.compile(r"(?P<id>\d+)-(?P<name>[a-z]+)-7").match("12-abc-7")


def logger_created_once() -> None:
    log = logging.getLogger("zerorag_guard.tests.leaks.once")
    log.debug("called with %s", [1, 2, 3])


_BOUNDED: dict[int, bytes] = {}
_calls = [0]


def dict_reaching_fixed_size() -> None:
    _calls[0] += 1
    _BOUNDED[_calls[0] % 3] = bytes(4 * KB)


_SCRATCH: list[int] = []


def list_cleared_each_call() -> None:
    _SCRATCH.extend(range(5000))
    _SCRATCH.clear()


def interned_strings() -> None:
    [sys.intern(f"token-{i}") for i in range(300)]


class _Memo:
    cache: dict[int, list[int]] = {}

    @classmethod
    def get(cls, key: int) -> list[int]:
        if key not in cls.cache and len(cls.cache) < 2:
            cls.cache[key] = list(range(1000))
        return cls.cache.get(key, [])


def class_memo_that_saturates() -> None:
    _calls[0] += 1
    _Memo.get(_calls[0])


def generator_consumed() -> None:
    sum(x * x for x in range(10_000))


def temporary_bytearray() -> None:
    buffer = bytearray(200 * KB)
    buffer[0] = 1


def exception_raised_and_caught() -> None:
    try:
        raise ValueError("bad value " + "x" * 100)
    except ValueError as exc:
        str(exc)


_RING: collections.deque[bytearray] = collections.deque(maxlen=8)


def ring_buffer_of_10kb_items() -> None:
    # Longer than the warm-up: items keep replacing older ones well into the measured rounds.
    _RING.append(bytearray(10 * KB))


@pytest.mark.parametrize(
    "fn",
    [
        warm_lru_cache,
        compiled_regex,
        logger_created_once,
        dict_reaching_fixed_size,
        list_cleared_each_call,
        interned_strings,
        class_memo_that_saturates,
        generator_consumed,
        temporary_bytearray,
        exception_raised_and_caught,
        ring_buffer_of_10kb_items,
    ],
    ids=lambda f: f.__name__,
)
def test_no_false_positive_on_functions_that_warm_up(fn: Callable[[], None]) -> None:
    report = LeakProfiler(warmup=3, iterations=10).check(fn)
    assert not report.leaking, report.format()
    assert report.growth_bytes_per_iteration < KB


# -- what the profiler leaves behind ------------------------------------------------------------
def test_tracemalloc_stopped_again_when_it_was_off() -> None:
    assert not tracemalloc.is_tracing()
    LeakProfiler(iterations=3).check(generator_consumed)
    assert not tracemalloc.is_tracing()


@pytest.mark.slow
def test_tracemalloc_left_on_with_its_traces_when_it_was_on() -> None:
    tracemalloc.start(3)
    try:
        mine = bytearray(1000)
        # The census then runs under tracemalloc, ten times slower: keep the rounds few.
        report = LeakProfiler(warmup=0, iterations=2).check(leak_10kb)
        assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 3
        assert tracemalloc.get_object_traceback(mine) is not None
        assert report.leaking
    finally:
        tracemalloc.stop()


def test_a_second_run_does_not_see_the_first_as_a_leak() -> None:
    first = LeakProfiler(iterations=5)
    assert first.check(leak_10kb).leaking
    _KEPT.clear()
    again = first.check(generator_consumed)  # the same profiler, reused
    fresh = LeakProfiler(iterations=5).check(generator_consumed)
    assert not again.leaking, again.format()
    assert not fresh.leaking, fresh.format()


# -- the context-manager form -------------------------------------------------------------------
def test_context_manager_with_step_per_iteration() -> None:
    with LeakProfiler(warmup=2, iterations=5) as lp:
        for _ in range(lp.total_steps + 3):  # steps past the schedule are counted, not measured
            _KEPT.append(bytearray(10 * KB))  # leak inside the loop
            lp.step()
    report = lp.report()
    assert isinstance(report, LeakReport) and report.leaking
    assert report.top_sites[0].site == _line_of("# leak inside the loop")
    assert not tracemalloc.is_tracing()


def test_context_manager_loop_shorter_than_the_schedule() -> None:
    with LeakProfiler(warmup=1, iterations=5) as lp:
        for _ in range(5):  # the untraced rounds only: no sites, the census still decides
            _KEPT.append(bytearray(10 * KB))
            lp.step()
    report = lp.report()
    assert report.leaking and report.traced is None and report.top_sites == []


def test_step_outside_the_block_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        LeakProfiler().step()
    with pytest.raises(ValueError, match="iterations=1"):
        LeakProfiler(iterations=1)


# -- the monitor's leak trend (no profiler) -------------------------------------------------------
def test_leak_trend_from_rss_after_cleanups() -> None:
    rising = [(0.0, 100.0), (30.0, 110.0), (60.0, 120.0), (90.0, 130.0)]
    assert health.leak_trend(rising) == {
        "slope_mb_per_min": 20.0,
        "r2": 1.0,
        "cleanups": 4,
        "span_seconds": 90.0,
    }
    assert health.leak_trend([(t, 100.0) for t, _ in rising]) is None
    assert health.leak_trend(rising[:3]) is None  # too few cleanups
    assert health.leak_trend([(0.0, 100.0), (20.0, 130.0), (40.0, 100.0), (90.0, 131.0)]) is None


def _monitor_after_cleanups(rss_mb: list[float]) -> dict[str, Any]:
    now, reading = [1000.0], [0]
    monitor = MemoryMonitor(
        GuardConfig(),
        probe=MemoryProbe(rss_reader=lambda: reading[0]),
        clock=lambda: now[0],
        wall=lambda: 1.7e9 + now[0],
        limit_reader=lambda: EffectiveLimit(64 * 1024 * MB, "host", "injected"),
    )
    try:
        for mb in rss_mb:
            reading[0] = int(mb * MB)
            monitor.cleanup("standard")
            now[0] += 30.0
        return monitor.get_health_status()
    finally:
        monitor.stop()


def test_monitor_health_reports_rising_rss_after_cleanup_with_its_slope() -> None:
    status = _monitor_after_cleanups([200.0, 205.0, 210.0, 215.0, 220.0])
    assert status["leak"]["slope_mb_per_min"] == 10.0
    assert any(
        "suspected leak" in issue and "10.0 MB/min" in issue for issue in status["health_issues"]
    )


def test_monitor_health_flat_rss_after_cleanup_is_no_leak() -> None:
    status = _monitor_after_cleanups([200.0] * 5)
    assert status["leak"] is None
    assert not any("leak" in issue for issue in status["health_issues"])


# -- the command line -----------------------------------------------------------------------------
HELPER = textwrap.dedent("""
    KEPT = []

    def leak():
        KEPT.append(bytearray(10240))

    def steady():
        return sum(range(1000))

    def keep(size):
        KEPT.append(bytearray(size))

    def fails(x):
        raise RuntimeError(f"no {x}")
""")


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tests_helper_module.py").write_text(HELPER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "zerorag_guard", "leaks", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    leaking = _cli(tmp_path, "tests_helper_module:leak", "--iterations", "5", "--json")
    assert leaking.returncode == 1, leaking.stderr
    data = json.loads(leaking.stdout)
    assert data["leaking"] and data["top_sites"][0]["site"].endswith("tests_helper_module.py:5")

    steady = _cli(tmp_path, "tests_helper_module:steady", "--iterations", "5", "--warmup", "2")
    assert steady.returncode == 0, steady.stdout + steady.stderr
    assert "no leak" in steady.stdout

    # --args: a function that needs arguments (each call keeps 10 KB: a leak).
    keeping = _cli(tmp_path, "tests_helper_module:keep", "--args", "[10240]", "--iterations", "5")
    assert keeping.returncode == 1, keeping.stdout + keeping.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["no_such_module:f"],
        ["tests_helper_module:missing"],
        ["not-a-target"],
        ["tests_helper_module:leak", "--warmup", "x"],
        ["json:dumps"],  # needs an argument: seen ending in a traceback
        ["tests_helper_module:keep", "--args", '{"size": 1}'],  # not a JSON list
        ["tests_helper_module:keep", "--args", "[1, 2]"],  # one too many
        ["tests_helper_module:fails", "--args", '["luck"]'],  # the target raises
    ],
)
def test_cli_bad_usage_is_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    result = _cli(tmp_path, *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    if args[0] == "json:dumps":
        assert "json:dumps(obj, *" in result.stderr and "--args" in result.stderr
    if args[0].endswith(":fails"):
        assert "raised RuntimeError: no luck" in result.stderr


def test_the_running_process_monitor_is_not_taken_for_a_leak() -> None:
    # Its sampler fills a bounded history while the profiler measures; the profiler holds it.
    from zerorag_guard import configure, get_monitor

    get_monitor()
    configure(sample_interval=0.001)

    def nothing() -> None:
        time.sleep(0.002)

    report = LeakProfiler(warmup=2, iterations=8).check(nothing)
    assert not report.leaking, report.format()
    before = len(get_monitor().history)
    time.sleep(0.05)
    assert len(get_monitor().history) > before  # and the sampler runs again afterwards
