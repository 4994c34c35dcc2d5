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

from ..budget.checkpoint import Checkpoint
from ..budget.guarded import memory_budget
from ..budget.writes import WriteStats
from ..monitor.monitor import MemoryMonitor
from ._guarded_store import GuardedStore
from ._per_item import Adapt, UnplacedArgumentWarning

__all__ = ["GuardedStore", "UnplacedArgumentWarning", "WriteStats", "guard_store", "store_kind"]


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


class LlamaIndexStore(GuardedStore):
    """A LlamaIndex ``BasePydanticVectorStore``: ``add`` and ``async_add`` of nodes."""

    kind = "llamaindex"
    WRITES = {"add": ("nodes",), "async_add": ("nodes",)}

    def add(self, *args: Any, **kwargs: Any) -> Any:
        return self._write("add", args, kwargs)

    async def async_add(self, *args: Any, **kwargs: Any) -> Any:
        return await self._awrite("async_add", args, kwargs)

    def max_batch_size(self) -> Any:
        collection = getattr(self.__wrapped__, "_collection", None)  # ChromaVectorStore
        return chroma_max_batch_size(getattr(collection, "_client", None))

    def store_figures(self) -> dict[str, Any]:
        collection = getattr(self.__wrapped__, "_collection", None)
        items = (
            collection.count() if collection is not None and hasattr(collection, "count") else None
        )
        return {**super().store_figures(), "items": items}


_KINDS: dict[str, type[GuardedStore]] = {
    "chromadb": ChromaStore,
    "qdrant": QdrantStore,
    "faiss": FaissStore,
    "langchain": LangChainStore,
    "llamaindex": LlamaIndexStore,
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
    first_batch_size: Optional[int] = None,
) -> Any:
    """Wrap ``store`` so its bulk writes run in adaptive chunks under a memory budget.

    The budget arguments are those of :func:`~zerorag_guard.memory_budget` (checked here);
    ``batch_size`` is the target chunk size (default ``BATCH_SIZE``), never above the store's
    own maximum. A write's first batch is the largest batch of the write before (slow start's
    one item for the first write), and never below ``first_batch_size`` where one is given.
    Returns a proxy that behaves as the store (``isinstance`` included) and adds
    ``get_health_status()``, ``write_stats()`` and ``last_budget``.

    ``checkpoint`` (a file path) makes a job's bulk writes resume after a kill: the n-th
    guarded write of the run skips the chunks the n-th write of a previous run completed (see
    :mod:`zerorag_guard.budget.checkpoint`). The job must make the same writes in the same order.
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
        "first_batch_size": first_batch_size,
    }
    return _KINDS[store_kind(store)](store, settings)
