"""The Dask worker plugin and the thresholds it sets: the guard acts below Dask's own marks.

:func:`guard_thresholds` derives the guard's thresholds from a worker's ``memory_limit`` and
Dask's marks (critical at ``critical_share`` of ``pause``, main at ``main_share`` of critical);
:class:`MemoryGuardPlugin` applies them on every worker at start-up and starts its monitor. The
public names are re-exported by :mod:`zerorag_guard.integrations.dask`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional, Union

import dask
from distributed.diagnostics.plugin import WorkerPlugin

from ..config import GuardConfig
from ..memory.probes import MB
from ..monitor.process import get_monitor

if TYPE_CHECKING:
    from distributed import Worker

logger = logging.getLogger("zerorag_guard")

#: Dask's memory marks, lowest first, as fractions of a worker's ``memory_limit``.
DASK_MARKS = ("target", "spill", "pause", "terminate")
#: Default critical threshold: this share of Dask's ``pause`` mark.
CRITICAL_SHARE = 0.95
#: Default main threshold: this share of the critical one (the guide's 1000/1200 MB ratio).
MAIN_SHARE = 1 / 1.2


def dask_memory_fractions() -> dict[str, Union[float, bool]]:
    """Dask's memory marks from ``dask.config`` (``distributed.worker.memory.*``); a mark that is
    switched off is ``False``."""
    return {m: dask.config.get(f"distributed.worker.memory.{m}") for m in DASK_MARKS}


def _check_shares(anchor: str, critical_share: float, main_share: float) -> None:
    if anchor not in DASK_MARKS:
        raise ValueError(f"anchor={anchor!r} is not one of Dask's marks {', '.join(DASK_MARKS)}")
    if not 0 < critical_share <= 1:
        raise ValueError(f"critical_share={critical_share!r} is not valid: expected 0 < x <= 1")
    if not 0 < main_share < 1:
        raise ValueError(f"main_share={main_share!r} is not valid: expected 0 < x < 1")


def guard_thresholds(
    memory_limit: int,
    *,
    anchor: str = "pause",
    critical_share: float = CRITICAL_SHARE,
    main_share: float = MAIN_SHARE,
    fractions: Optional[dict[str, Union[float, bool]]] = None,
) -> dict[str, float]:
    """The guard's settings for a worker with ``memory_limit`` bytes: ``critical_threshold_mb`` is
    ``critical_share`` of Dask's ``anchor`` mark and ``threshold_mb`` is ``main_share`` of that
    (the preventive threshold follows as ``preventive_ratio`` of the main one).

    A switched-off anchor falls back to the next higher mark that is on, and to the limit itself
    when none is. With 400 MB and the defaults: critical 290 MiB, main 242 MiB, preventive 193 MiB,
    against Dask's pause at 305 MiB.
    """
    _check_shares(anchor, critical_share, main_share)
    marks = dask_memory_fractions() if fractions is None else fractions
    fraction = 1.0
    for name in DASK_MARKS[DASK_MARKS.index(anchor) :]:
        value = marks.get(name, False)
        if value is not False and value is not None:
            fraction = float(value)
            break
    critical = critical_share * fraction * memory_limit / MB
    return {"critical_threshold_mb": critical, "threshold_mb": main_share * critical}


class MemoryGuardPlugin(WorkerPlugin):
    """Ties each worker's guard to its Dask ``memory_limit`` and starts the monitor.

    Register once per cluster with ``client.register_plugin(MemoryGuardPlugin())``; workers that
    join later get it too. On each worker the process-wide monitor's thresholds are set by
    :func:`guard_thresholds` (``anchor``, ``critical_share``, ``main_share``); ``settings`` are
    further :class:`~zerorag_guard.GuardConfig` changes applied on every worker (for example
    ``batch_size=50``). A worker without a memory limit (``None`` or 0) keeps its thresholds.
    ``share_node`` (on unless ``share_node=False`` is given) makes the workers of one node plan
    on shares of its memory: the budgets of :func:`guarded_map` reserve their batches in one
    ledger (the node's ``MemAvailable``, or the container's cgroup), so partitions on
    different workers never each plan on the node's whole headroom.
    The worker's health is :func:`worker_health` (``client.run(worker_health)``).
    """

    name = "zerorag-guard"
    idempotent = False  # registering again replaces the plugin, so new arguments take effect

    def __init__(
        self,
        *,
        anchor: str = "pause",
        critical_share: float = CRITICAL_SHARE,
        main_share: float = MAIN_SHARE,
        **settings: Any,
    ) -> None:
        _check_shares(anchor, critical_share, main_share)
        settings = {"share_node": True, **settings}
        GuardConfig().replace(**settings)  # a typo fails here, on the client, not on each worker
        self.anchor = anchor
        self.critical_share = critical_share
        self.main_share = main_share
        self.settings = settings
        #: What ``setup`` applied on this worker (set there; empty on the client's copy).
        self.applied: dict[str, Any] = {}

    def setup(self, worker: Worker) -> None:
        monitor = get_monitor()
        limit = worker.memory_manager.memory_limit
        changes = dict(self.settings)
        if limit:
            changes.update(
                guard_thresholds(
                    limit,
                    anchor=self.anchor,
                    critical_share=self.critical_share,
                    main_share=self.main_share,
                    fractions=_worker_fractions(worker),
                )
            )
        if changes:
            monitor.configure(**changes)
        monitor.start()
        self.applied = {"memory_limit": limit, **changes}
        logger.info("zerorag_guard on Dask worker %s: %s", worker.address, self.applied)


def _worker_fractions(worker: Worker) -> dict[str, Union[float, bool]]:
    """The marks this worker really uses (its memory manager read them at start-up)."""
    mm = worker.memory_manager
    marks = dask_memory_fractions()
    marks.update(
        target=mm.memory_target_fraction,
        spill=mm.memory_spill_fraction,
        pause=mm.memory_pause_fraction,
    )
    return marks


def _plugin_of(worker: Worker) -> Optional[MemoryGuardPlugin]:
    for plugin in worker.plugins.values():
        if isinstance(plugin, MemoryGuardPlugin):
            return plugin
    return None
