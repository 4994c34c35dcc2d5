"""Dask distributed: workers under guard, cluster health, and guarded partitioned maps.

Dask's worker memory manager acts on fractions of each worker's ``memory_limit``: above
``target`` (0.6) and ``spill`` (0.7) it spills stored results to disk, above ``pause`` (0.8) the
worker stops starting tasks, above ``terminate`` (0.95) the nanny kills and restarts it.
:class:`MemoryGuardPlugin` sets the guard's thresholds on every worker below ``pause``, so the
guard's cleanup and batch shrinking act first and Dask's own measures stay a last resort.
:func:`guarded_map` runs an ingestion as partitions whose items go through
:meth:`~zerorag_guard.MemoryBudget.chunks` on the workers; :func:`cluster_health` collects every
worker's health report.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from distributed import get_worker, wait

from ..budget.guarded import memory_budget
from ..events import Level
from ..memory.probes import MB
from ..monitor.process import get_monitor
from ._dask_plugin import (
    CRITICAL_SHARE,
    DASK_MARKS,
    MAIN_SHARE,
    MemoryGuardPlugin,
    _plugin_of,
    _worker_fractions,
    dask_memory_fractions,
    guard_thresholds,
)

if TYPE_CHECKING:
    from distributed import Client, Worker

logger = logging.getLogger("zerorag_guard")

__all__ = [
    "CRITICAL_SHARE",
    "DASK_MARKS",
    "MAIN_SHARE",
    "GuardedMapError",
    "GuardedMapResult",
    "MemoryGuardPlugin",
    "PartitionReport",
    "cluster_health",
    "dask_memory_fractions",
    "guard_thresholds",
    "guarded_map",
    "worker_health",
]


def worker_health(dask_worker: Optional[Worker] = None) -> dict[str, Any]:
    """This worker's :meth:`~zerorag_guard.MemoryMonitor.get_health_status` plus a ``dask``
    section: address, host, status (``running``, ``paused``, ...), memory limit, Dask's marks in
    MB, and whether the plugin guards it. Run it everywhere with ``client.run(worker_health)``."""
    worker = dask_worker if dask_worker is not None else get_worker()
    health = get_monitor().get_health_status()
    limit = worker.memory_manager.memory_limit
    fractions = _worker_fractions(worker)
    plugin = _plugin_of(worker)
    health["dask"] = {
        "address": worker.address,
        "host": socket.gethostname(),
        "status": worker.status.name,
        "memory_limit_mb": round(limit / MB, 1) if limit else None,
        "fractions": fractions,
        "marks_mb": {
            k: round(v * limit / MB, 1) for k, v in fractions.items() if v is not False and limit
        },
        "guarded": plugin is not None,
        "applied": dict(plugin.applied) if plugin is not None else {},
    }
    return health


def cluster_health(client: Client) -> dict[str, Any]:
    """``{"workers": {address: health}, "summary": {...}}`` for every worker of ``client``.

    The summary holds the worst health score and its worker, total RSS against the total memory
    limit (a worker without a Dask limit counts with its effective limit), workers by level and
    by Dask status, the workers not guarded by :class:`MemoryGuardPlugin`, and every health issue
    prefixed with its worker. A worker that could not report is listed under ``errors``.
    ``summary["nodes"]`` is each node's group, by host name: its workers, its cgroup (path,
    working set, limit), ``MemAvailable``, PSI, and the loops holding reservations there (each
    once, though every worker sharing a ledger sees it).
    """
    replies = client.run(worker_health, on_error="return")
    workers: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for address, reply in replies.items():
        if isinstance(reply, BaseException):
            errors[address] = f"{type(reply).__name__}: {reply}"
        else:
            workers[address] = reply
    return {"workers": workers, "summary": _summarize(workers, errors)}


def _summarize(workers: dict[str, dict[str, Any]], errors: dict[str, str]) -> dict[str, Any]:
    levels = dict.fromkeys((lv.name for lv in Level), 0)
    statuses: dict[str, int] = {}
    rss = limit = 0.0
    worst: Optional[tuple[int, str]] = None
    issues: list[str] = []
    for address, h in sorted(workers.items()):
        usage, info = h["memory_usage"], h["dask"]
        levels[usage["level"]] += 1
        statuses[info["status"]] = statuses.get(info["status"], 0) + 1
        rss += usage["rss_mb"]
        limit += info["memory_limit_mb"] or usage["limit_mb"]
        if worst is None or h["health_score"] < worst[0]:
            worst = (h["health_score"], address)
        issues.extend(f"{address}: {issue}" for issue in h["health_issues"])
    return {
        "workers": len(workers),
        "worst_score": worst[0] if worst else None,
        "worst_worker": worst[1] if worst else None,
        "total_rss_mb": round(rss, 1),
        "total_limit_mb": round(limit, 1),
        "percent_of_limit": round(100.0 * rss / limit, 1) if limit else None,
        "levels": levels,
        "statuses": statuses,
        "unguarded": sorted(a for a, h in workers.items() if not h["dask"]["guarded"]),
        "issues": issues,
        "errors": errors,
        "nodes": _nodes(workers),
    }


def _nodes(workers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each node's group, from the health reports of its workers."""
    nodes: dict[str, dict[str, Any]] = {}
    loops: dict[str, dict[tuple[str, int, int], int]] = {}
    for address, h in sorted(workers.items()):
        host, group = h["dask"]["host"], h["group"]
        node = nodes.setdefault(
            host,
            {
                "workers": [],
                **{
                    k: group[k]
                    for k in (
                        "cgroup",
                        "cgroup_working_set_mb",
                        "cgroup_limit_mb",
                        "host_available_mb",
                        "pressure_some_avg10",
                    )
                },
            },
        )
        node["workers"].append(address)
        for r in group["reservations"]:
            loops.setdefault(host, {})[(r["ledger"], r["pid"], r["loop"])] = r["bytes"]
    for host, node in nodes.items():
        held = loops.get(host, {})
        node["loops"] = len(held)
        node["processes_reserving"] = len({pid for (_, pid, _), b in held.items() if b})
        node["reserved_mb"] = round(sum(held.values()) / MB, 1)
    return nodes


# -- guarded_map -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionReport:
    """What one partition did on its worker: items ``start:stop`` of the input, the worker and
    process that ran them, the batch sizes the budget chose, and the budget's ``stats()``."""

    index: int
    start: int
    stop: int
    worker: str
    pid: int
    batch_sizes: list[int] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


class GuardedMapResult(list[Any]):
    """The results of :func:`guarded_map`, one per item in item order (a plain ``list``), with
    ``partitions``: a :class:`PartitionReport` each, in partition order."""

    partitions: list[PartitionReport]

    def __init__(self, results: Iterable[Any] = (), partitions: Sequence[PartitionReport] = ()):
        super().__init__(results)
        self.partitions = list(partitions)


class GuardedMapError(Exception):
    """Some partitions of :func:`guarded_map` failed; the others' results are kept.

    ``failed``: partition index → the exception it raised; ``ranges``: partition index →
    ``(start, stop)`` item positions, so ``items[start:stop]`` can be resubmitted; ``results``:
    partition index → its list of results, for the partitions that completed; ``partitions``:
    their reports.
    """

    def __init__(
        self,
        failed: dict[int, BaseException],
        ranges: dict[int, tuple[int, int]],
        results: dict[int, list[Any]],
        partitions: list[PartitionReport],
    ) -> None:
        total = len(failed) + len(results)
        lines = [
            f"partition {i} (items {ranges[i][0]}..{ranges[i][1] - 1}): {type(exc).__name__}: {exc}"
            for i, exc in sorted(failed.items())
        ]
        super().__init__(
            f"{len(failed)} of {total} partitions failed; the results of the other "
            f"{len(results)} are in .results\n" + "\n".join(lines)
        )
        self.failed = failed
        self.ranges = ranges
        self.results = results
        self.partitions = partitions


def _run_partition(
    fn: Callable[[list[Any]], Sequence[Any]],
    index: int,
    start: int,
    items: list[Any],
    limit_mb: Union[float, str, None],
    batch_size: Optional[int],
    operation: str,
) -> tuple[list[Any], PartitionReport]:
    """On a worker: feed ``items`` to ``fn`` in adaptive chunks under a budget."""
    worker = get_worker()
    if _plugin_of(worker) is None:
        logger.warning(
            "zerorag_guard: Dask worker %s has no MemoryGuardPlugin; the guard's thresholds are "
            "not tied to its memory limit (client.register_plugin(MemoryGuardPlugin()))",
            worker.address,
        )
    monitor = get_monitor()
    results: list[Any] = []
    with memory_budget(limit_mb, batch_size=batch_size, name=f"{operation}[{index}]") as budget:
        for chunk in budget.chunks(items):
            began = time.perf_counter()
            try:
                out = fn(chunk)
                if not isinstance(out, (list, tuple)) or len(out) != len(chunk):
                    got = f"{len(out)} results" if isinstance(out, (list, tuple)) else repr(out)
                    raise ValueError(
                        f"{operation}: fn must return a list with one result per item; for "
                        f"a chunk of {len(chunk)} items (from item {start + budget.processed}) "
                        f"it returned {got[:200]}"
                    )
            except BaseException:
                monitor.record_operation(operation, time.perf_counter() - began, error=True)
                raise
            monitor.record_operation(operation, time.perf_counter() - began, budget.peak_mb)
            results.extend(out)
            del out, chunk
    stop = start + len(items)
    stats = budget.stats()
    return results, PartitionReport(
        index, start, stop, worker.address, os.getpid(), budget.batch_sizes, stats
    )


def guarded_map(
    client: Client,
    fn: Callable[[list[Any]], Sequence[Any]],
    items: Iterable[Any],
    *,
    limit_mb: Union[float, str, None] = None,
    partition_size: int = 1000,
    batch_size: Optional[int] = None,
    name: Optional[str] = None,
    timeout: Optional[float] = None,
) -> GuardedMapResult:
    """Run ``fn`` over ``items`` on the cluster, under a memory budget on every worker.

    ``items`` is cut into partitions of ``partition_size`` (one Dask task each); on its worker a
    partition is fed through ``memory_budget(limit_mb, batch_size=batch_size).chunks()``, and
    ``fn`` is called once per chunk: it takes a list of items and returns a list with one result
    per item. ``limit_mb`` defaults to the worker's main threshold, which
    :class:`MemoryGuardPlugin` puts below Dask's pause mark; ``batch_size`` caps the chunks
    (default: the worker's ``BATCH_SIZE``). Items travel inside the task graph, so keep them
    light (ids, paths, short texts) and load the heavy part in ``fn``.

    Returns a :class:`GuardedMapResult`: the results in item order, with per-partition
    reports. If partitions fail, the others still run to the end and :class:`GuardedMapError`
    is raised with the failed indices, their exceptions and the completed results.
    ``timeout`` (seconds) bounds the wait; on expiry the tasks are cancelled and
    ``TimeoutError`` raised.
    """
    if (
        isinstance(partition_size, bool)
        or not isinstance(partition_size, int)
        or partition_size < 1
    ):
        raise ValueError(f"partition_size={partition_size!r} is not valid: expected an int >= 1")
    data = list(items)
    operation = name or f"guarded_map:{getattr(fn, '__qualname__', type(fn).__name__)}"
    token = uuid.uuid4().hex
    ranges = {
        i: (start, min(start + partition_size, len(data)))
        for i, start in enumerate(range(0, len(data), partition_size))
    }
    futures = [
        client.submit(
            _run_partition,
            fn,
            i,
            start,
            data[start:stop],
            limit_mb,
            batch_size,
            operation,
            key=f"guarded_map-{token}-{i}",
            pure=False,
        )
        for i, (start, stop) in ranges.items()
    ]
    try:
        wait(futures, timeout=timeout)
    except BaseException:
        client.cancel(futures)
        raise
    failed: dict[int, BaseException] = {}
    results: dict[int, list[Any]] = {}
    reports: list[PartitionReport] = []
    for i, future in enumerate(futures):
        if future.status == "finished":
            results[i], report = future.result()
            reports.append(report)
        elif future.status == "error":
            failed[i] = future.exception()
        else:  # cancelled or lost: nothing to fetch
            failed[i] = RuntimeError(f"partition {i} was {future.status}")
    client.cancel(futures)  # release the partitions' results on the workers
    if failed:
        raise GuardedMapError(failed, ranges, results, reports)
    return GuardedMapResult((r for i in sorted(results) for r in results[i]), reports)
