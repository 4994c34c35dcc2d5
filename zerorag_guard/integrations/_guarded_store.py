"""The guarded store: a ``wrapt.ObjectProxy`` whose bulk writes run in adaptive chunks.

:class:`GuardedStore` is what every kind of store in :mod:`~zerorag_guard.integrations.vectorstores`
specializes (each names its writes and their per-item arguments): a write's items are cut into
chunks sized by :meth:`~zerorag_guard.MemoryBudget.chunks`, every per-item argument in step, and
each chunk is one call of the store's own write.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import wrapt

from ..budget.budget import MemoryBudget
from ..budget.guarded import memory_budget
from ..budget.writes import AccountedWrite, WriteStats
from ..monitor.monitor import MemoryMonitor
from ..monitor.process import get_monitor
from ._per_item import Adapt, Plan, call_arguments, combine, plan_write, rebuild, same


# -- the proxy ------------------------------------------------------------------------------------
class GuardedStore(wrapt.ObjectProxy):
    """A store whose bulk writes run in adaptive chunks under a memory budget.

    ``isinstance`` and every attribute other than the guarded writes and the additions below
    (:meth:`get_health_status`, :meth:`write_stats`, :attr:`last_budget`) reach the store.
    """

    kind = "store"
    #: Guarded write name -> its per-item arguments, the items first: those the signature
    #: names and the documented ones that arrive through ``**kwargs``.
    WRITES: dict[str, tuple[str, ...]] = {}
    #: Arguments that may be list-like but are never per item (qdrant's shard keys).
    WHOLE: frozenset[str] = frozenset()

    def __init__(self, store: Any, settings: dict[str, Any]) -> None:
        super().__init__(store)
        self._self_settings = settings
        self._self_stats = WriteStats()
        self._self_last: Optional[MemoryBudget] = None
        self._self_signatures: dict[str, inspect.Signature] = {}

    # -- what the proxy adds
    @property
    def last_budget(self) -> Optional[MemoryBudget]:
        """The budget of the latest guarded write (its ``batch_sizes``, ``processed``, ...)."""
        return self._self_last

    @property
    def guard_monitor(self) -> MemoryMonitor:
        return self._self_settings["monitor"] or get_monitor()

    def write_stats(self) -> dict[str, Any]:
        """The guarded writes so far (see :class:`WriteStats`)."""
        return self._self_stats.to_dict()

    def store_figures(self) -> dict[str, Any]:
        """The store's own figures: kind, name, item count (None where it cannot tell)."""
        return {"kind": self.kind, "type": type(self.__wrapped__).__name__}

    def get_health_status(self) -> dict[str, Any]:
        """The monitor's health report plus ``store`` (its figures) and ``writes`` (statistics)."""
        health = self.guard_monitor.get_health_status()
        try:
            figures = self.store_figures()
        except Exception as exc:  # the report must not fail because the store cannot count
            figures = {"kind": self.kind, "error": f"{type(exc).__name__}: {exc}"}
        health["store"] = figures
        health["writes"] = self.write_stats()
        return health

    # -- the machinery
    def max_batch_size(self) -> Any:
        """The store's own ceiling on one write (an int, None, or an awaitable of either)."""
        return None

    def _budget(self, cap: Optional[int]) -> MemoryBudget:
        # The largest chunk is batch_size (default BATCH_SIZE), lowered to the store's own cap;
        # memory may make chunks smaller, never larger.
        s = self._self_settings
        size = s["batch_size"] or self.guard_monitor.config.batch_size
        if cap is not None and cap > 0:
            size = min(size, cap)
        return memory_budget(
            s["limit_mb"],
            increase_mb=s["increase_mb"],
            on_exceed=s["on_exceed"],
            batch_size=size,
            name=f"{self.kind}.write",
            monitor=s["monitor"],
            scope=s["scope"],
            checkpoint=s["checkpoint"],
        )

    def _first_batch(self) -> Optional[int]:
        """A write starts where the previous one got to (its largest batch), not at slow
        start's one item: against a persistent store each call has a fixed cost (chroma's
        embedded client: about 50 ms), and a chunk of nodes already built costs little more.
        No write starts below ``first_batch_size`` where one was given."""
        last = self._self_last
        previous = max(last.batch_sizes) if last is not None and last.batch_sizes else 0
        return max(previous, self._self_settings.get("first_batch_size") or 0) or None

    def _prepare(self, name: str, args: Any, kwargs: Any) -> tuple[Any, Any, Optional[Plan]]:
        method = getattr(self.__wrapped__, name)
        signature = self._self_signatures.get(name)
        if signature is None:
            signature = self._self_signatures[name] = inspect.signature(method)
        bound = signature.bind(*args, **kwargs)
        arguments = call_arguments(bound)
        found = self._fields(name, arguments)
        if found is None:
            return method, bound, None
        fields, adapt = found
        known = {*self.WRITES[name], *self.WHOLE}
        return method, bound, plan_write(arguments, fields, known, f"{self.kind} {name}", adapt)

    def _fields(
        self, name: str, arguments: dict[str, Any]
    ) -> Optional[tuple[dict[str, Any], Adapt]]:
        """The per-item arguments of this call (the items first; ``arguments`` has the
        ``**kwargs`` spread out) and how a chunk of them becomes the call's arguments; None to
        pass the call through whole."""
        names = self.WRITES[name]
        if arguments.get(names[0]) is None:
            return None
        return {n: arguments[n] for n in names if arguments.get(n) is not None}, same

    def _write(self, name: str, args: Any, kwargs: Any) -> Any:
        method, bound, plan = self._prepare(name, args, kwargs)
        if plan is None:
            return method(*args, **kwargs)
        budget = self._budget(self.max_batch_size())
        results = []
        first = self._first_batch()
        with AccountedWrite(budget, self._self_stats, plan.count) as active:
            self._self_last = active
            for batch in active.chunks(plan.items, first_batch_size=first):
                a, k = rebuild(bound, plan.adapt(plan.part_of(batch)))
                results.append(method(*a, **k))
        return combine(results)

    async def _awrite(self, name: str, args: Any, kwargs: Any) -> Any:
        method, bound, plan = self._prepare(name, args, kwargs)
        if plan is None:
            return await method(*args, **kwargs)
        cap = self.max_batch_size()
        if inspect.isawaitable(cap):
            cap = await cap
        budget = self._budget(cap)
        results = []
        first = self._first_batch()
        async with AccountedWrite(budget, self._self_stats, plan.count) as active:
            self._self_last = active
            async for batch in active.achunks(plan.items, first_batch_size=first):
                a, k = rebuild(bound, plan.adapt(plan.part_of(batch)))
                results.append(await method(*a, **k))
        return combine(results)

    def _dispatch(self, name: str, args: Any, kwargs: Any) -> Any:
        if inspect.iscoroutinefunction(getattr(self.__wrapped__, name)):
            return self._awrite(name, args, kwargs)
        return self._write(name, args, kwargs)
