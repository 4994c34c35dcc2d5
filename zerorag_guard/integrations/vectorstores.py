"""Guarded vector stores: bulk writes split into adaptive chunks under a memory budget.

:func:`guard_store` wraps a chromadb collection, a qdrant-client ``QdrantClient``, a faiss index
or a LangChain ``VectorStore`` in a ``wrapt.ObjectProxy``. Its bulk writes (chromadb
``add``/``upsert``; qdrant ``upsert``/``upload_points``/``upload_collection``; faiss
``add``/``add_with_ids``; LangChain ``add_texts``/``add_documents`` and their async twins) are
called once per chunk, every per-item argument sliced in step (numpy arrays as views, no copy)
wherever it sits: named in the signature, passed through ``**kwargs``, or inside a qdrant
``models.Batch``. Each chunk is sized by :meth:`~zerorag_guard.MemoryBudget.chunks`. A call with
one item or none, or with a list-like argument of the items' length that the guard does not
know, goes through whole (the latter with :class:`UnplacedArgumentWarning`): a guess could
pair an item with another's id. Everything else reaches the store untouched, and each write
returns what the bare one returns. The store type is told from its classes' modules: no
optional package is imported.

When one chunk's write fails, the chunks before it are in the store and the others are not; the
exception, of its original type, gets ``zerorag_processed``: how many leading items were written,
so ``items[exc.zerorag_processed:]`` is exactly what is left (the attribute of
:func:`~zerorag_guard.memory_guarded`'s ``chunk=``).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Union

import wrapt

from ..budget import MemoryBudget, memory_budget
from ..checkpoint import Checkpoint
from ..monitor import MemoryMonitor, get_monitor
from ._per_item import (
    Adapt,
    Plan,
    UnplacedArgumentWarning,
    call_arguments,
    combine,
    plan_write,
    rebuild,
    same,
)
from ._writes import AccountedWrite, WriteStats

__all__ = ["GuardedStore", "UnplacedArgumentWarning", "WriteStats", "guard_store", "store_kind"]


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
        embedded client: about 50 ms), and a chunk of nodes already built costs little more."""
        last = self._self_last
        return max(last.batch_sizes) if last is not None and last.batch_sizes else None

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


class ChromaStore(GuardedStore):
    """A chromadb ``Collection`` (or ``AsyncCollection``): ``add`` and ``upsert`` never send a
    batch above the client's maximum (``get_max_batch_size()``, 5461 for the embedded client)."""

    kind = "chromadb"
    WRITES = {
        "add": ("ids", "embeddings", "metadatas", "documents", "images", "uris"),
        "upsert": ("ids", "embeddings", "metadatas", "documents", "images", "uris"),
    }

    def add(self, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch("add", args, kwargs)

    def upsert(self, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch("upsert", args, kwargs)

    def max_batch_size(self) -> Any:
        return chroma_max_batch_size(getattr(self.__wrapped__, "_client", None))

    def store_figures(self) -> dict[str, Any]:
        store = self.__wrapped__
        figures = {**super().store_figures(), "name": store.name}
        for key, value in (("items", store.count()), ("max_batch_size", self.max_batch_size())):
            if inspect.iscoroutine(value):  # AsyncCollection: not awaitable from a sync report
                value.close()
                value = None
            figures[key] = value
        return figures


class QdrantStore(GuardedStore):
    """A qdrant-client ``QdrantClient``: its local mode writes everything in one go whatever
    ``batch_size`` says, so the chunks are cut before the call."""

    kind = "qdrant"
    WRITES = {
        "upsert": ("points",),
        "upload_points": ("points",),
        "upload_collection": ("vectors", "payload", "ids"),
    }
    WHOLE = frozenset({"shard_key_selector"})

    def upsert(self, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch("upsert", args, kwargs)

    def upload_points(self, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch("upload_points", args, kwargs)

    def upload_collection(self, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch("upload_collection", args, kwargs)

    def _fields(
        self, name: str, arguments: dict[str, Any]
    ) -> Optional[tuple[dict[str, Any], Adapt]]:
        points: Any = arguments.get("points")
        if name == "upsert" and hasattr(points, "model_copy") and hasattr(points, "ids"):
            # models.Batch: ids, vectors (a list, or named vectors: a dict of lists) and
            # payloads side by side, cut into smaller Batches.
            fields = {k: getattr(points, k) for k in ("ids", "vectors", "payloads")}

            def as_batch(part: dict[str, Any]) -> dict[str, Any]:
                return {"points": points.model_copy(update=part)}

            return {k: v for k, v in fields.items() if v is not None}, as_batch
        return super()._fields(name, arguments)

    def store_figures(self) -> dict[str, Any]:
        client = self.__wrapped__
        names = [c.name for c in client.get_collections().collections]
        counts = {n: client.count(n, exact=True).count for n in names}
        return {
            **super().store_figures(),
            "name": ", ".join(names),
            "items": sum(counts.values()),
            "collections": counts,
        }


class FaissStore(GuardedStore):
    """A faiss ``Index``: ``add(x)`` and ``add_with_ids(x, ids)``, row slices of ``x`` (views)."""

    kind = "faiss"
    WRITES = {"add": ("x",), "add_with_ids": ("x", "ids")}

    def add(self, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch("add", args, kwargs)

    def add_with_ids(self, *args: Any, **kwargs: Any) -> Any:
        return self._dispatch("add_with_ids", args, kwargs)

    def store_figures(self) -> dict[str, Any]:
        index = self.__wrapped__
        return {
            **super().store_figures(),
            "name": type(index).__name__,
            "items": int(index.ntotal),
            "dimension": int(index.d),
        }


class LangChainStore(GuardedStore):
    """A LangChain ``VectorStore``: ``add_texts``/``add_documents`` and the async twins; the ids
    of the chunks come back as one list, in order, as the bare call returns them.

    ``ids`` and ``metadatas`` are cut with the items whether the store's signature names them
    (``InMemoryVectorStore``) or they arrive through ``**kwargs`` (``VectorStore.add_documents``,
    which ``langchain-chroma`` inherits); a document's own ``id`` travels with it.
    """

    kind = "langchain"
    WRITES = {
        "add_texts": ("texts", "metadatas", "ids"),
        "add_documents": ("documents", "ids"),
        "aadd_texts": ("texts", "metadatas", "ids"),
        "aadd_documents": ("documents", "ids"),
    }

    def add_texts(self, *args: Any, **kwargs: Any) -> Any:
        return self._write("add_texts", args, kwargs)

    def add_documents(self, *args: Any, **kwargs: Any) -> Any:
        return self._write("add_documents", args, kwargs)

    async def aadd_texts(self, *args: Any, **kwargs: Any) -> Any:
        return await self._awrite("aadd_texts", args, kwargs)

    async def aadd_documents(self, *args: Any, **kwargs: Any) -> Any:
        return await self._awrite("aadd_documents", args, kwargs)

    def store_figures(self) -> dict[str, Any]:
        store = self.__wrapped__
        items = None
        if isinstance(getattr(store, "store", None), dict):  # InMemoryVectorStore
            items = len(store.store)
        else:
            collection = getattr(store, "_collection", None)  # langchain-chroma
            if collection is not None and hasattr(collection, "count"):
                items = collection.count()
        name = getattr(store, "collection_name", None) or getattr(store, "_collection_name", None)
        return {**super().store_figures(), "name": name or type(store).__name__, "items": items}


_KINDS: dict[str, type[GuardedStore]] = {
    "chromadb": ChromaStore,
    "qdrant": QdrantStore,
    "faiss": FaissStore,
    "langchain": LangChainStore,
}


def store_kind(store: Any) -> str:
    """``chromadb``, ``qdrant``, ``faiss``, ``langchain`` or ``llamaindex``, from the modules of
    the store's classes (nothing is imported); ``TypeError`` for anything else."""
    for cls in type(store).__mro__:
        module = getattr(cls, "__module__", "") or ""
        root = module.split(".")[0]
        if cls.__name__ == "VectorStore" and root.startswith("langchain"):
            return "langchain"
        if cls.__name__ == "BasePydanticVectorStore" and root == "llama_index":
            return "llamaindex"
        if root == "chromadb" and hasattr(store, "upsert") and hasattr(store, "_client"):
            return "chromadb"
        if root == "qdrant_client" and hasattr(store, "upload_points"):
            return "qdrant"
        if root == "faiss" and hasattr(store, "ntotal"):
            return "faiss"
    raise TypeError(
        f"guard_store() cannot guard {type(store).__module__}.{type(store).__qualname__}: "
        "expected a chromadb Collection, a qdrant_client QdrantClient, a faiss Index, a "
        "LangChain VectorStore or a LlamaIndex vector store"
    )


def chroma_max_batch_size(client: Any) -> Any:
    """The largest write a chroma ``client`` takes (an awaitable for an async client); None
    when it cannot tell."""
    getter = getattr(client, "get_max_batch_size", None)
    if getter is None:
        return None
    try:
        return getter()
    except Exception:  # a client that cannot tell: no ceiling of its own
        return None


def guard_store(
    store: Any,
    limit_mb: Union[float, str, None] = None,
    *,
    increase_mb: Union[float, str, None] = None,
    on_exceed: str = "cleanup",
    batch_size: Optional[int] = None,
    monitor: Optional[MemoryMonitor] = None,
    scope: str = "auto",
    checkpoint: Optional[str] = None,
    reset_checkpoint: bool = False,
) -> Any:
    """Wrap ``store`` so its bulk writes run in adaptive chunks under a memory budget.

    The budget arguments are those of :func:`~zerorag_guard.memory_budget` (checked here);
    ``batch_size`` is the target chunk size (default ``BATCH_SIZE``), never above the store's
    own maximum. Returns a proxy that behaves as the store (``isinstance`` included) and adds
    ``get_health_status()``, ``write_stats()`` and ``last_budget``.

    ``checkpoint`` (a file path) makes a job's bulk writes resume after a kill: the n-th
    guarded write of the run skips the chunks the n-th write of a previous run completed (see
    :mod:`zerorag_guard.checkpoint`). The job must make the same writes in the same order.
    """
    memory_budget(
        limit_mb, increase_mb=increase_mb, on_exceed=on_exceed, batch_size=batch_size, scope=scope
    )
    if isinstance(store, GuardedStore):
        store = store.__wrapped__
    settings = {
        "limit_mb": limit_mb,
        "increase_mb": increase_mb,
        "on_exceed": on_exceed,
        "batch_size": batch_size,
        "monitor": monitor,
        "scope": scope,
        "checkpoint": None
        if checkpoint is None
        else Checkpoint(checkpoint, reset=reset_checkpoint),
    }
    kind = store_kind(store)
    if kind == "llamaindex":
        from .llamaindex import LlamaIndexStore

        return LlamaIndexStore(store, settings)
    return _KINDS[kind](store, settings)
