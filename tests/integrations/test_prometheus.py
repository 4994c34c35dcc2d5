"""Prometheus: the exposition parses and its figures are the monitor's."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("prometheus_client")
from budget_helpers import Steady, monitor_with
from group_helpers import busy_v2_group
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from zerorag_guard import MemoryMonitor, get_monitor, memory_budget, memory_guarded
from zerorag_guard.integrations.prometheus import GuardCollector, make_registry, serve
from zerorag_guard.memory.probes import MB

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(f"zerorag_guard_{name}", tuple(sorted(labels.items())))]


@pytest.fixture
def quiet_monitor() -> MemoryMonitor:
    """A monitor that is not started, reading a steady 300 MB: nothing moves behind the test."""
    return monitor_with(Steady(300), threshold_mb=500, critical_threshold_mb=600)


def test_figures_match_the_monitor(quiet_monitor: MemoryMonitor) -> None:
    monitor = quiet_monitor
    for strategy in ("light", "light", "standard", "aggressive"):
        monitor.cleanup(strategy)
    for severity in ("medium", "high", "high", "critical"):
        monitor.alert(severity, "test", "a test alert")

    @memory_guarded(name="ingest", batch_size=4)
    def ingest(texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    @memory_guarded(name="broken")
    def broken() -> None:
        raise RuntimeError("boom")

    for _ in range(3):
        ingest(["a", "bb"])
    with pytest.raises(RuntimeError):
        broken()
    with memory_budget(monitor=monitor, batch_size=16) as budget:
        for _ in budget.chunks(range(40)):
            pass

    registry = make_registry(monitor)
    samples = scrape(generate_latest(registry).decode())

    assert value(samples, "rss_bytes") == 300 * MB
    assert value(samples, "limit_bytes", source="host") == 64 * 1024 * MB  # budget_helpers.HOST
    assert value(samples, "threshold_bytes", threshold="preventive") == 400 * MB
    assert value(samples, "threshold_bytes", threshold="main") == 500 * MB
    assert value(samples, "threshold_bytes", threshold="critical") == 600 * MB
    assert value(samples, "level") == 0
    # Level normal (300 MB, preventive at 400), limit and thresholds fine: 100, less 5 for the
    # one critical alert.
    assert value(samples, "health_score") == 95
    for strategy, count in (("light", 2), ("standard", 1), ("aggressive", 1)):
        assert value(samples, "cleanups_total", strategy=strategy) == count
        assert value(samples, "freed_bytes_total", strategy=strategy) == 0  # steady reading
    for severity, count in (("info", 0), ("medium", 1), ("high", 1), ("critical", 1)):
        assert value(samples, "alerts_total", severity=severity) == count
    # The second "high" came within the repeat window: counted on its open episode.
    assert value(samples, "alert_repeats_total", severity="high") == 1
    assert value(samples, "alert_episodes_open") == 3
    # Guarded calls go to the process-wide monitor, not this one.
    assert not any(name.startswith("zerorag_guard_operation") for name, _ in samples)
    # Batches of the budget: slow start 1, 2, 4, 8, 16, then the 9 left.
    assert budget.batch_sizes == [1, 2, 4, 8, 16, 9]
    assert value(samples, "batch_size_count") == 6
    assert value(samples, "batch_size_sum") == 40
    assert value(samples, "batch_size_bucket", le="1.0") == 1
    assert value(samples, "batch_size_bucket", le="8.0") == 4
    assert value(samples, "batch_size_bucket", le="16.0") == 6
    assert value(samples, "batch_size_bucket", le="+Inf") == 6
    assert value(samples, "last_batch_size") == 9

    process = scrape(generate_latest(make_registry()).decode())
    calls = get_monitor().counters()["operations"]
    assert value(process, "operation_calls_total", operation="ingest") == 3
    assert value(process, "operation_errors_total", operation="ingest") == 0
    assert value(process, "operation_calls_total", operation="broken") == 1
    assert value(process, "operation_errors_total", operation="broken") == 1
    assert value(process, "operation_seconds_total", operation="ingest") == pytest.approx(
        calls["ingest"]["total_seconds"]
    )


def test_the_group_budgets_share_is_exported(tmp_path: Path) -> None:
    reader = Steady(100)
    monitor = monitor_with(reader, group=busy_v2_group(tmp_path)[0])
    with memory_budget(monitor=monitor, batch_size=8) as budget:
        for i, _ in enumerate(budget.chunks(range(100))):
            reader.mb = 100 + (8 if i % 2 == 0 else 0)  # each batch's items cost ~1 MB
            if i == 6:
                samples = scrape(generate_latest(make_registry(monitor)).decode())
                held = budget.monitor.group.reservations()
    assert value(samples, "group_bytes", measure="cgroup_usage") == 650 * MB
    assert value(samples, "group_bytes", measure="cgroup_working_set") == 100 * MB
    assert value(samples, "group_bytes", measure="cgroup_limit") == 1000 * MB
    assert value(samples, "group_bytes", measure="host_available") == 1000 * MB
    assert value(samples, "memory_pressure_ratio") == 0.125
    (loop,) = held
    assert loop["bytes"] > 0
    assert value(samples, "reserved_bytes", ledger="process") == loop["bytes"]
    assert value(samples, "reserving_loops", ledger="process") == 1
    after = scrape(generate_latest(make_registry(monitor)).decode())
    assert not any(name.endswith(("reserved_bytes", "reserving_loops")) for name, _ in after)


def test_rss_of_the_real_process_is_within_a_few_percent() -> None:
    samples = scrape(generate_latest(make_registry()).decode())
    rss = psutil.Process().memory_info().rss
    assert value(samples, "rss_bytes") == pytest.approx(rss, rel=0.03)
    assert value(samples, "sampler_running") == 1
    # Read here from the kernel, not from the monitor: host RAM, or a smaller cgroup limit.
    ((source, limit),) = [
        (dict(labels)["source"], v)
        for (name, labels), v in samples.items()
        if name == "zerorag_guard_limit_bytes"
    ]
    host = psutil.virtual_memory().total
    if source == "host":
        assert limit == host
    else:
        assert source.startswith("cgroup") and 0 < limit < host


def test_level_follows_the_monitor() -> None:
    reader = Steady(300)
    monitor = monitor_with(reader, threshold_mb=500, critical_threshold_mb=600)
    reader.mb = 650
    samples = scrape(generate_latest(make_registry(monitor)).decode())
    assert value(samples, "level") == 3
    assert value(samples, "alerts_total", severity="critical") == 1
    assert value(samples, "cleanups_total", strategy="aggressive") == 1
    assert value(samples, "health_score") < 50


def test_a_new_registry_leaves_the_default_one_alone() -> None:
    before = set(REGISTRY._names_to_collectors)
    make_registry()
    assert set(REGISTRY._names_to_collectors) == before
    own = CollectorRegistry()
    assert make_registry(registry=own) is own
    with pytest.raises(ValueError, match="Duplicated"):
        own.register(GuardCollector())  # would double every series: refused


def test_describe_names_every_family_collect_yields(quiet_monitor: MemoryMonitor) -> None:
    collector = GuardCollector(quiet_monitor)
    described = {(m.name, m.type) for m in collector.describe()}
    assert described == {(m.name, m.type) for m in collector.collect()}


@pytest.fixture
def server() -> Iterator[Any]:
    srv = serve(0, "127.0.0.1")
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_http_endpoint_serves_the_metrics(server: Any) -> None:
    get_monitor().alert("high", "test", "served")
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = scrape(text)
    assert value(samples, "alerts_total", severity="high") == 1
    assert value(samples, "threshold_bytes", threshold="main") == int(
        get_monitor().config.threshold_mb * MB
    )


def test_the_docs_example_runs() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "prometheus.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), re.S)
    example = next(b for b in blocks if "make_registry()" in b)
    namespace: dict[str, Any] = {}
    exec(compile(example, str(docs), "exec"), namespace)
    rss = namespace["families"]["zerorag_guard_rss_bytes"].samples[0].value
    assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.03)
