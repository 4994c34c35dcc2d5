"""Prometheus: the monitor's figures as metrics, read at scrape time.

:class:`GuardCollector` is a custom collector: nothing is updated on the hot path, every scrape
takes one health report and the monitor's exact counters
(:meth:`~zerorag_guard.MemoryMonitor.counters`) and turns them into metric families.
:func:`make_registry` gives a registry holding it (a new one, so the process-wide default
registry is only used when asked for), and :func:`serve` exposes it over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..memory.probes import MB
from ..monitor.monitor import MemoryMonitor
from ..monitor.process import get_monitor

PREFIX = "zerorag_guard"
#: Largest power-of-two bucket of the batch-size histogram; larger batches fall in ``+Inf``.
MAX_BATCH_BUCKET = 1 << 20

#: Every family :meth:`GuardCollector.collect` yields, by kind (what ``describe`` reports).
_FAMILIES: dict[Any, tuple[str, ...]] = {
    GaugeMetricFamily: (
        "rss_bytes",
        "peak_rss_bytes",
        "lifetime_peak_rss_bytes",
        "limit_bytes",
        "level",
        "threshold_bytes",
        "health_score",
        "health_issues",
        "gc_time_ratio",
        "sampler_running",
        "operation_max_seconds",
        "operation_peak_bytes",
        "last_batch_size",
        "group_bytes",
        "memory_pressure_ratio",
        "reserved_bytes",
        "reserving_loops",
        "alert_episodes_open",
    ),
    CounterMetricFamily: (
        "cleanups",
        "freed_bytes",
        "alerts",
        "alert_repeats",
        "cleanup_queue_overflows",
        "operation_calls",
        "operation_errors",
        "operation_seconds",
    ),
    HistogramMetricFamily: ("batch_size",),
}


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _by_label(kind: type[Any], name: str, doc: str, label: str, values: dict[str, float]) -> Metric:
    family = kind(f"{PREFIX}_{name}", doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class GuardCollector(Collector):
    """Exposes a monitor's figures; ``monitor`` defaults to the process-wide one, looked up at
    every scrape (so it follows :func:`~zerorag_guard.monitor.monitor.get_monitor` after a reset).

    Metrics (all prefixed ``zerorag_guard_``): ``rss_bytes``, ``peak_rss_bytes``,
    ``lifetime_peak_rss_bytes``, ``limit_bytes{source}``, ``level`` (0 NORMAL .. 3 CRITICAL),
    ``threshold_bytes{threshold}``, ``health_score``, ``health_issues``, ``gc_time_ratio``,
    ``sampler_running``; counters ``cleanups_total{strategy}``, ``freed_bytes_total{strategy}``,
    ``alerts_total{severity}``, ``alert_repeats_total{severity}`` (and the gauge
    ``alert_episodes_open``), ``cleanup_queue_overflows_total``,
    ``operation_calls_total{operation}``, ``operation_errors_total{operation}``,
    ``operation_seconds_total{operation}``; gauges ``operation_max_seconds{operation}`` and
    ``operation_peak_bytes{operation}``; the histogram ``batch_size`` (items per batch of every
    budget's ``chunks()``, power-of-two buckets) and the gauge ``last_batch_size``; the group
    budgets share: ``group_bytes{measure}`` (``cgroup_usage``, ``cgroup_working_set``,
    ``cgroup_limit``, ``host_available``, each where the machine has it),
    ``memory_pressure_ratio`` (PSI's some avg10), ``reserved_bytes{ledger}`` and
    ``reserving_loops{ledger}`` (every process's loops in the ledgers this one shares).
    """

    def __init__(self, monitor: Optional[MemoryMonitor] = None) -> None:
        self._monitor = monitor

    @property
    def monitor(self) -> MemoryMonitor:
        return self._monitor if self._monitor is not None else get_monitor()

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so a registry refuses a second guard collector
        (every series would be doubled) without reading the monitor."""
        for kind, names in _FAMILIES.items():
            for name in names:
                yield kind(f"{PREFIX}_{name}", "")

    def collect(self) -> Iterator[Metric]:
        monitor = self.monitor
        health = monitor.get_health_status()  # takes a fresh sample
        counts = monitor.counters()
        limit = monitor.effective_limit()
        usage = health["memory_usage"]
        samples = monitor.history
        rss = samples[-1].rss_mb * MB if samples else usage["rss_mb"] * MB
        yield _gauge("rss_bytes", "Resident set size of the process.", rss)
        yield _gauge("peak_rss_bytes", "Largest RSS the sampler saw.", usage["peak_mb"] * MB)
        yield _gauge(
            "lifetime_peak_rss_bytes",
            "Peak RSS over the process's life (the kernel's high-water mark, kept across resets).",
            usage["lifetime_peak_mb"] * MB,
        )
        yield _by_label(
            GaugeMetricFamily,
            "limit_bytes",
            "Effective memory limit: the smallest of host RAM, cgroup limit and rlimits.",
            "source",
            {limit.source: limit.bytes},
        )
        yield _gauge(
            "level",
            "Memory level: 0 NORMAL, 1 PREVENTIVE, 2 HIGH, 3 CRITICAL.",
            int(monitor.level),
        )
        yield _by_label(
            GaugeMetricFamily,
            "threshold_bytes",
            "The monitor's thresholds in force (settings, auto, or a budget's).",
            "threshold",
            dict(zip(("preventive", "main", "critical"), monitor.thresholds.entries())),
        )
        yield _gauge("health_score", "Health score, 0 to 100.", health["health_score"])
        yield _gauge("health_issues", "Health issues reported now.", len(health["health_issues"]))
        yield _gauge(
            "gc_time_ratio",
            "Share of wall time spent in routine GC.",
            health["gc"]["share_of_wall_time"],
        )
        yield _gauge("sampler_running", "1 if the sampler thread runs.", int(monitor.running))
        yield _by_label(
            CounterMetricFamily,
            "cleanups",
            "Cleanups run, by strategy.",
            "strategy",
            counts["cleanups"],
        )
        yield _by_label(
            CounterMetricFamily,
            "freed_bytes",
            "Bytes of RSS freed by cleanups, by strategy.",
            "strategy",
            counts["freed_bytes"],
        )
        yield _by_label(
            CounterMetricFamily,
            "alerts",
            "Alerts raised (each episode's first and its recovery), by severity.",
            "severity",
            counts["alerts"],
        )
        episodes = health["alerts"]["episodes"]
        yield _by_label(
            CounterMetricFamily,
            "alert_repeats",
            "Alerts counted on an open episode instead of raised again, by severity.",
            "severity",
            episodes["repeats"],
        )
        yield _gauge(
            "alert_episodes_open",
            "Alert episodes not over yet (see ZERORAG_GUARD_ALERT_REPEAT_SECONDS).",
            len(episodes["open"]),
        )
        yield CounterMetricFamily(
            f"{PREFIX}_cleanup_queue_overflows",
            "Standard cleanups dropped because the queue was full.",
            value=counts["queue_overflows"],
        )
        yield from self._operations(counts["operations"])
        yield from self._batches(counts["batches"])
        yield from self._group(health["group"])

    @staticmethod
    def _group(group: dict[str, Any]) -> Iterator[Metric]:
        """The health report's ``group`` section: what the budgets' scopes count and share."""
        measures = {
            "cgroup_usage": group["cgroup_usage_mb"],
            "cgroup_working_set": group["cgroup_working_set_mb"],
            "cgroup_limit": group["cgroup_limit_mb"],
            "host_available": group["host_available_mb"],
        }
        yield _by_label(
            GaugeMetricFamily,
            "group_bytes",
            "The group budgets share: the cgroup's usage, working set and limit, MemAvailable.",
            "measure",
            {k: v * MB for k, v in measures.items() if v is not None},
        )
        pressure = GaugeMetricFamily(
            f"{PREFIX}_memory_pressure_ratio", "PSI's memory some avg10, as a fraction."
        )
        if group["pressure_some_avg10"] is not None:
            pressure.add_metric([], group["pressure_some_avg10"] / 100)
        yield pressure
        held: dict[str, float] = {}
        loops: dict[str, float] = {}
        for r in group["reservations"]:
            held[r["ledger"]] = held.get(r["ledger"], 0) + r["bytes"]
            loops[r["ledger"]] = loops.get(r["ledger"], 0) + 1
        yield _by_label(
            GaugeMetricFamily,
            "reserved_bytes",
            "Bytes the live batches of every process sharing a ledger hold reserved.",
            "ledger",
            held,
        )
        yield _by_label(
            GaugeMetricFamily,
            "reserving_loops",
            "Chunking loops sharing a ledger (this process's and others').",
            "ledger",
            loops,
        )

    @staticmethod
    def _operations(ops: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        for kind, name, doc, key, scale in (
            (CounterMetricFamily, "operation_calls", "Guarded calls.", "calls", 1),
            (CounterMetricFamily, "operation_errors", "Guarded calls that raised.", "errors", 1),
            (
                CounterMetricFamily,
                "operation_seconds",
                "Time spent in guarded calls.",
                "total_seconds",
                1,
            ),
            (GaugeMetricFamily, "operation_max_seconds", "Longest guarded call.", "max_seconds", 1),
            (GaugeMetricFamily, "operation_peak_bytes", "Peak RSS of a call.", "peak_mb", MB),
        ):
            values = {op: stats[key] * scale for op, stats in ops.items()}
            yield _by_label(kind, name, doc, "operation", values)

    @staticmethod
    def _batches(batches: dict[str, Any]) -> Iterator[Metric]:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        upper = 1
        by_size = batches["buckets"]
        while upper <= MAX_BATCH_BUCKET:
            cumulative += by_size.get(upper, 0)
            buckets.append((str(float(upper)), cumulative))
            upper <<= 1
        buckets.append(("+Inf", batches["count"]))
        yield HistogramMetricFamily(
            f"{PREFIX}_batch_size",
            "Items per batch handed out by memory budgets' chunks().",
            buckets=buckets,
            sum_value=batches["items"],
        )
        yield _gauge("last_batch_size", "Items in the latest batch.", batches["last_size"])


def make_registry(
    monitor: Optional[MemoryMonitor] = None, registry: Optional[CollectorRegistry] = None
) -> CollectorRegistry:
    """``registry`` (default: a new :class:`~prometheus_client.CollectorRegistry`) with a
    :class:`GuardCollector` for ``monitor`` registered in it. Pass
    ``prometheus_client.REGISTRY`` to add the metrics to the process-wide default registry."""
    registry = CollectorRegistry() if registry is None else registry
    registry.register(GuardCollector(monitor))
    return registry


def serve(
    port: int = 9464,
    addr: str = "127.0.0.1",
    *,
    registry: Optional[CollectorRegistry] = None,
    monitor: Optional[MemoryMonitor] = None,
) -> WSGIServer:
    """Serve ``/metrics`` over HTTP from a daemon thread; returns the server (``server_port`` is
    the port, useful with ``port=0``; ``shutdown()`` and ``server_close()`` stop it).

    Serves ``registry`` if given (the caller registered what it wants in it), else a new
    registry from :func:`make_registry`. Listens on localhost unless ``addr`` says otherwise:
    metrics reveal process details, so opening them to the network is a choice to make.
    """
    server, _thread = start_http_server(
        port, addr=addr, registry=registry if registry is not None else make_registry(monitor)
    )
    return server
