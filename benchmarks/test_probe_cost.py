"""What a fresh reading costs: ``get_monitor().sample()`` against ``MemoryProbe.rss_bytes()`` and
``psutil.Process().memory_info()``, measured in the same run.

pytest-benchmark times the function it is given; the ratios need the other two figures from the
same run, so each benchmark also times the baselines with ``timeit`` (best of several repeats)
and stores the figures and ratios in ``benchmark.extra_info``. No timing is asserted: under
``--benchmark-disable`` (the smoke pass of ``make test``) the code runs once and the figures are
only recorded.
"""

from __future__ import annotations

import timeit
from typing import Any, Callable

import psutil
import pytest

from zerorag_guard import get_monitor
from zerorag_guard.memory.probes import MemoryProbe


def best_us(fn: Callable[[], Any], number: int = 2000, repeat: int = 5) -> float:
    """Best-of-``repeat`` cost of one call in microseconds."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def baselines() -> dict[str, float]:
    monitor = get_monitor()
    probe = MemoryProbe(use_kernel_peak=False)
    process = psutil.Process()
    figures = {
        "sample_us": best_us(monitor.sample),
        "rss_bytes_us": best_us(probe.rss_bytes),
        "psutil_us": best_us(process.memory_info),
    }
    figures["psutil_over_sample"] = figures["psutil_us"] / figures["sample_us"]
    figures["sample_over_rss_bytes"] = figures["sample_us"] / figures["rss_bytes_us"]
    figures["probe_source"] = probe.source  # type: ignore[assignment]
    probe.close()
    return figures


def record(benchmark: Any) -> dict[str, float]:
    figures = baselines()
    benchmark.extra_info.update(
        {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    )
    print(
        " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    )
    return figures


def test_monitor_sample(benchmark: Any) -> None:
    monitor = get_monitor()
    sample = benchmark(monitor.sample)
    assert sample.rss_mb > 0
    figures = record(benchmark)
    assert figures["sample_us"] > 0 and figures["psutil_us"] > 0


def test_probe_rss_bytes(benchmark: Any) -> None:
    probe = MemoryProbe(use_kernel_peak=False)
    assert benchmark(probe.rss_bytes) > 0
    record(benchmark)
    probe.close()


def test_psutil_memory_info(benchmark: Any) -> None:
    process = psutil.Process()
    assert benchmark(process.memory_info).rss > 0
    record(benchmark)


@pytest.mark.parametrize("strategy", ["light"])
def test_light_cleanup(benchmark: Any, strategy: str) -> None:
    monitor = get_monitor()
    result = benchmark(monitor.cleanup, strategy)
    assert result is not None and result.strategy == strategy
