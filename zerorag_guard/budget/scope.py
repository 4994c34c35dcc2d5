"""Scopes: what a budget's ceiling counts, and the headroom a loop plans its next batch on.

- ``process``: this process's RSS against the budget's ceiling;
- ``tree``: this process and its descendants (by PSS: see :mod:`zerorag_guard.memory.group`) against
  the ceiling. The kernel keeps no high-water mark for a tree, so batch peaks are sampled;
- ``cgroup``: the working set of the process's memory cgroup against ``limit_mb`` or 90% of the
  cgroup's limit (the tighter), shared with every process in the cgroup;
- ``auto`` (the default): ``process``, and when the effective limit is a cgroup's, also 90% of
  it on the cgroup's working set; on a host with no cgroup limit, ``MemAvailable`` less
  :data:`HOST_RESERVE` bounds the headroom too, shared with the node's other guarded processes
  when ``share_node`` is on (as :class:`~zerorag_guard.integrations.dask.MemoryGuardPlugin`
  sets it on Dask workers).

Each batch plans on the tightest headroom, less what the *other* loops sharing it hold reserved
(in-process loops for RSS, every loop of the cgroup for its working set or of the node for
``MemAvailable``: see :mod:`zerorag_guard.memory.ledger`), and never on more than a fair share of
it: the headroom divided by the loops sharing it. So sixteen threads under one ceiling each plan on
a sixteenth, and a loop that starts late is not left what the first ones did not take. When even
the fair share fits no batch of ``min_batch_size`` at the cost measured, and other loops hold
reservations, the loop waits its turn (it holds nothing while it waits) for at most
:data:`MAX_POLLS` polls of the ledger, then takes what fits: no loop waits longer than that for a
batch, so none starves.

The cost per item is learned in the frame the batch is sized in: this process's exact peak
(``process``, ``cgroup``, ``auto``), or the tree's sampled peak (``tree``).
"""

from __future__ import annotations

import functools
import itertools
import os
from typing import TYPE_CHECKING, Any, Optional

from ..memory.cgroups import GroupPeak
from ..memory.group import SampledWindow
from ..memory.ledger import Ledger, Turn
from ..memory.limits import EFFECTIVE_LIMIT_SHARE
from ..memory.probes import MB
from .sizing import SAFETY, BatchSizer

if TYPE_CHECKING:
    from .budget import MemoryBudget

SCOPES = ("auto", "process", "tree", "cgroup")
#: Host memory a budget never plans on, whatever ``MemAvailable`` says.
HOST_RESERVE = 256 * MB
#: How many times a loop whose fair share fits no batch polls the ledger before it goes ahead.
MAX_POLLS = 40
_loop_ids = itertools.count(1)
#: A turn with no other loop in it.
ALONE = Turn({}, (0, 0))


def check_scope(scope: Any) -> str:
    if scope not in SCOPES:
        raise ValueError(
            f"scope={scope!r} is not valid: expected one of {', '.join(map(repr, SCOPES))}"
        )
    return str(scope)


class Scope:
    """One chunking loop's view of its scope: the readings, the headrooms and its ledger."""

    def __init__(self, budget: MemoryBudget) -> None:
        settings, monitor = budget._settings, budget.monitor
        self.kind = settings.scope
        self._probe = monitor.probe
        self._group = group = monitor.group
        limit = monitor.effective_limit()
        #: The ceiling on the cgroup's working set, where this scope counts it.
        self.group_limit: Optional[int] = None
        self._host = False
        if self.kind == "cgroup":
            cgroups = [c.bytes for c in limit.candidates if c.source.startswith("cgroup")]
            bounds = [int(EFFECTIVE_LIMIT_SHARE * min(cgroups))] if cgroups else []
            if settings.limit_mb is not None:
                bounds.append(int(settings.limit_mb * MB))
            self.group_limit = min(bounds) if bounds else budget.limit_bytes()
        elif self.kind == "auto":
            if limit.source.startswith("cgroup"):
                self.group_limit = int(EFFECTIVE_LIMIT_SHARE * limit.bytes)
            self._host = limit.source == "host"
        cgroup = group.cgroup if self.group_limit is not None else None
        # share_node: the host's MemAvailable is shared with the node's other guarded processes.
        self._node = self._host and monitor.config.share_node
        key = "node" if self._node else None if cgroup is None else f"cgroup:{cgroup.path}"
        self.ledger: Ledger = group.ledger(key)
        #: The cgroup's peak over this loop, where this scope counts the cgroup.
        self.peak: Optional[GroupPeak] = None if cgroup is None else group.peak()
        self.loop = next(_loop_ids)
        self._root = os.getpid()
        self._tree = False  # whether the last reading was the tree's (else RSS)
        self._working_set: Optional[int] = None
        self._available: Optional[int] = None
        self._limit: Optional[int] = None

    # -- readings
    def read(self) -> int:
        """The memory batches are sized in: this process's RSS, or its tree's PSS."""
        if self.kind == "tree":
            tree = self._group.tree(self._root)
            self._tree = tree is not None
            if tree is not None:
                return tree
        return self._probe.rss_bytes()

    def window(self, exact: bool, start: int) -> Any:
        """A peak window over the next batch, in the frame of :meth:`read`."""
        if self._tree:
            return SampledWindow(self.read, start)
        return self._probe.open_window(exact, start)

    def measure(self, reading: int, ceiling: int) -> tuple[int, int, bool]:
        """Read the group once for this batch; returns what the budget's policy checks:
        (usage, its ceiling, whether usage is ``reading`` itself)."""
        self._working_set = (
            None if self.group_limit is None else self._group.working_set(self.group_limit)
        )
        if self.peak is not None:
            self.peak.note(self._working_set)
        self._available = self._group.host_available(reading) if self._host else None
        if self.kind == "cgroup" and self._working_set is not None:
            assert self.group_limit is not None
            return self._working_set, self.group_limit, False
        return reading, ceiling, True

    # -- headroom
    def headroom(self, turn: Turn, reading: int, ceiling: int) -> int:
        """What the next batch may plan on (with the readings of the last :meth:`measure`): the
        tightest headroom of the scope, each less the other loops' reservations and capped at
        a fair share of it."""
        heads = []
        if self.kind != "cgroup" or self._working_set is None:
            # RSS and the tree are shared by this process's loops alone.
            heads.append(_share(ceiling - reading, turn.others_here, turn.loops_here))
        if self._working_set is not None:
            assert self.group_limit is not None
            free = self.group_limit - self._working_set
            heads.append(_share(free, turn.others_all, turn.loops_all))
        if self._available is not None:
            free = self._available - HOST_RESERVE
            if self._node:
                heads.append(_share(free, turn.others_all, turn.loops_all))
            else:
                heads.append(free - turn.others_here)
        return min(heads)

    def reserve(
        self, sizer: BatchSizer, reading: int, ceiling: int, polls: int = MAX_POLLS
    ) -> tuple[int, int]:
        """Reserve the next batch's memory in the ledger, waiting a turn (at most ``polls``
        polls) while the headroom fits no batch and other loops hold reservations; returns the
        reading and the limit the batch is sized under. An asyncio loop passes ``polls=0``: a
        task that slept would block the very tasks whose batches it waits for."""
        for poll in range(polls + 1):
            choose = functools.partial(self._choose, sizer, reading, ceiling, poll < polls)
            self.ledger.plan(self.loop, choose)
            if self._limit is not None:
                return reading, self._limit
            self.ledger.wait()
            reading = self.read()
            self.measure(reading, ceiling)
        raise AssertionError("unreachable: the last poll always plans")  # pragma: no cover

    def _choose(
        self, sizer: BatchSizer, reading: int, ceiling: int, may_wait: bool, turn: Turn
    ) -> int:
        limit = reading + self.headroom(turn, reading, ceiling)
        sizer.share(alone=turn.loops_here == 1 and not self._tree)
        if (
            may_wait
            and turn.others_all
            and SAFETY * (limit - reading) < sizer.need(sizer.min_size, reading)
        ):
            self._limit = None
            return 0  # not this loop's turn: it holds nothing while the others finish
        self._limit = limit
        return sizer.need(sizer.size_for(reading, limit), reading)

    def end(self) -> tuple[Optional[int], Optional[str]]:
        """The loop ended: its reservation ends; returns the cgroup's peak over the loop in
        bytes and how it was measured (None, None where this scope counts no cgroup)."""
        self.ledger.release(self.loop)
        if self.peak is None:
            return None, None
        return self.peak.close(), self.peak.source


def _share(free: int, reserved: int, loops: int) -> int:
    """The headroom one of ``loops`` loops may plan on: what ``free`` leaves after the others'
    ``reserved`` bytes, and no more than its fair share of ``free``."""
    return min(free - reserved, free // max(1, loops))
