"""``VectorStoreService``: the product guide's vector store, ingesting under a memory budget.

Texts are embedded and written batch by batch; the batches are the adaptive chunks of a
:func:`~zerorag_guard.memory_budget`, so embedding and writing a batch stay under the ceiling and
cleanup runs between batches. The default backend is an embedded chromadb ``PersistentClient``
in ``./zerorag_guard_demo/chroma``; ``qdrant`` (qdrant-client's local mode) and ``faiss`` (in
memory) are the others. Chroma always receives embeddings (its own embedding function, which
would download a model, is never set up) and its telemetry is off: nothing reaches the network.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional, Union

import numpy as np

from ..budget.budget import MemoryBudget
from ..budget.guarded import memory_budget
from ..budget.writes import AccountedWrite, WriteStats
from ..monitor.monitor import MemoryMonitor
from ..monitor.process import get_monitor
from .embedders import Embedder, HashingEmbedder

__all__ = ["BACKENDS", "DEFAULT_DIRECTORY", "VectorStoreService"]

#: Where the default persistent stores live, under the working directory.
DEFAULT_DIRECTORY = "zerorag_guard_demo"
BACKENDS = ("chroma", "qdrant", "faiss")
Metadata = Optional[dict[str, Any]]
Hit = dict[str, Any]


class _Chroma:
    """An embedded chromadb collection (persistent at ``path``, else in memory), cosine space."""

    def __init__(self, path: Optional[str], collection: str) -> None:
        # Read at chromadb's import on some versions; the Settings below cover the others.
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if path is None:
            self.client = chromadb.EphemeralClient(settings=settings)
        else:
            self.client = chromadb.PersistentClient(path=path, settings=settings)
        self.collection = self.client.get_or_create_collection(
            collection, embedding_function=None, metadata={"hnsw:space": "cosine"}
        )
        self.max_batch_size: Optional[int] = self.client.get_max_batch_size()

    def upsert(
        self, ids: list[str], vectors: np.ndarray, texts: list[str], metas: list[Metadata]
    ) -> None:
        self.collection.upsert(
            ids=ids,
            embeddings=vectors,
            documents=texts,
            metadatas=[m or None for m in metas],  # type: ignore[misc]
        )

    def query(self, vector: np.ndarray, k: int) -> list[Hit]:
        found = self.collection.query(
            query_embeddings=[vector], n_results=k, include=["documents", "metadatas", "distances"]
        )
        rows = zip(
            found["ids"][0],
            (found["documents"] or [[]])[0],
            (found["metadatas"] or [[]])[0],
            (found["distances"] or [[]])[0],
        )
        return [
            {"id": i, "text": t, "metadata": dict(m or {}), "score": 1.0 - float(d)}
            for i, t, m, d in rows
        ]

    def count(self) -> int:
        return int(self.collection.count())


class _Qdrant:
    """A qdrant-client local-mode collection (on disk at ``path``, else in memory); point ids
    are UUIDs derived from the service's string ids, which are kept in the payload."""

    def __init__(self, path: Optional[str], collection: str, dimension: int) -> None:
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(path=path) if path else QdrantClient(":memory:")
        self.name = collection
        self.max_batch_size: Optional[int] = None
        if not self.client.collection_exists(collection):
            self.client.create_collection(
                collection,
                vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
            )

    def upsert(
        self, ids: list[str], vectors: np.ndarray, texts: list[str], metas: list[Metadata]
    ) -> None:
        payloads = [{**(m or {}), "_id": i, "_text": t} for i, t, m in zip(ids, texts, metas)]
        keys: list[Any] = [str(uuid.uuid5(uuid.NAMESPACE_URL, i)) for i in ids]
        with warnings.catch_warnings():
            # Local mode warns past 20,000 points that a server would be faster: known here.
            warnings.filterwarnings("ignore", message="Local mode is not recommended")
            self.client.upsert(
                self.name,
                points=self.models.Batch(ids=keys, vectors=vectors.tolist(), payloads=payloads),
            )

    def query(self, vector: np.ndarray, k: int) -> list[Hit]:
        points = self.client.query_points(
            self.name, query=vector.tolist(), limit=k, with_payload=True
        ).points
        hits = []
        for p in points:
            payload = dict(p.payload or {})
            hid, text = payload.pop("_id", str(p.id)), payload.pop("_text", "")
            hits.append({"id": hid, "text": text, "metadata": payload, "score": float(p.score)})
        return hits

    def count(self) -> int:
        return int(self.client.count(self.name, exact=True).count)


class _Faiss:
    """A faiss inner-product index over unit vectors (= cosine), in memory; texts and
    metadata are kept beside it. Upserting an id again replaces its vector."""

    def __init__(self, dimension: int) -> None:
        import faiss

        self.index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        self.keys: dict[str, int] = {}
        self.rows: dict[int, tuple[str, str, Metadata]] = {}
        self.max_batch_size: Optional[int] = None

    def upsert(
        self, ids: list[str], vectors: np.ndarray, texts: list[str], metas: list[Metadata]
    ) -> None:
        again = [self.keys[i] for i in ids if i in self.keys]
        if again:
            self.index.remove_ids(np.asarray(again, dtype=np.int64))
        keys = np.asarray([self.keys.setdefault(i, len(self.keys)) for i in ids], dtype=np.int64)
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), keys)
        for key, i, t, m in zip(keys.tolist(), ids, texts, metas):
            self.rows[key] = (i, t, m)

    def query(self, vector: np.ndarray, k: int) -> list[Hit]:
        scores, keys = self.index.search(np.asarray([vector], dtype=np.float32), k)
        hits = []
        for score, key in zip(scores[0].tolist(), keys[0].tolist()):
            if key >= 0:
                hid, text, meta = self.rows[key]
                hits.append({"id": hid, "text": text, "metadata": dict(meta or {}), "score": score})
        return hits

    def count(self) -> int:
        return int(self.index.ntotal)


def _rows(
    texts: Iterable[str], metadatas: Optional[Iterable[Metadata]], ids: Optional[Iterable[str]]
) -> Iterable[tuple[Any, Any, Any]]:
    """``(text, metadata, id)`` in step, streamed; a column not given is None throughout."""
    columns = (texts, metadatas, ids)
    for row in zip(*(c for c in columns if c is not None), strict=True):
        values = iter(row)
        yield tuple(None if c is None else next(values) for c in columns)  # type: ignore[misc]


class VectorStoreService:
    """Embeds texts and writes them to a vector store in adaptive batches under a memory budget.

    ``backend`` is ``chroma`` (default), ``qdrant`` or ``faiss``. ``path`` is the store's
    directory (default ``./zerorag_guard_demo/<backend>``; ``":memory:"`` for none; faiss is
    always in memory). ``embedder`` defaults to
    :class:`~zerorag_guard.rag.embedders.HashingEmbedder`.
    The budget arguments are those of :func:`~zerorag_guard.memory_budget`; ``batch_size`` is the
    largest batch (default ``BATCH_SIZE``), never above the store's own maximum.
    """

    def __init__(
        self,
        path: Optional[str] = None,
        *,
        backend: str = "chroma",
        collection: str = "zerorag_guard",
        embedder: Optional[Embedder] = None,
        limit_mb: Union[float, str, None] = None,
        increase_mb: Union[float, str, None] = None,
        on_exceed: str = "cleanup",
        batch_size: Optional[int] = None,
        monitor: Optional[MemoryMonitor] = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(
                f"backend={backend!r} is not valid: expected one of {', '.join(BACKENDS)}"
            )
        self.embedder: Embedder = embedder or HashingEmbedder()
        self.backend_name = backend
        self.collection_name = collection
        if path is None and backend != "faiss":
            path = os.path.join(os.getcwd(), DEFAULT_DIRECTORY, backend)
        self.path = None if path == ":memory:" or backend == "faiss" else path
        if self.path is not None:
            os.makedirs(self.path, exist_ok=True)
        self._budget_args: dict[str, Any] = {
            "limit_mb": limit_mb,
            "increase_mb": increase_mb,
            "on_exceed": on_exceed,
            "batch_size": batch_size,
        }
        memory_budget(**self._budget_args)  # bad settings fail here, not at the first write
        self.monitor = monitor
        self.stats = WriteStats()
        self.last_budget: Optional[MemoryBudget] = None
        dim = self.embedder.dimension
        if backend == "chroma":
            self.store: Any = _Chroma(self.path, collection)
        elif backend == "qdrant":
            self.store = _Qdrant(self.path, collection, dim)
        else:
            self.store = _Faiss(dim)

    def _budget(self) -> MemoryBudget:
        args = dict(self._budget_args)
        monitor = self.monitor or get_monitor()
        size = args.pop("batch_size") or monitor.config.batch_size
        if self.store.max_batch_size:
            size = min(size, self.store.max_batch_size)
        return memory_budget(
            **args, batch_size=size, monitor=self.monitor, name="VectorStoreService.add_documents"
        )

    def add_documents(
        self,
        texts: Iterable[str],
        metadatas: Optional[Iterable[Metadata]] = None,
        ids: Optional[Iterable[str]] = None,
        *,
        progress: Optional[Callable[[int, MemoryBudget], None]] = None,
    ) -> list[str]:
        """Embed and upsert ``texts`` (with ``metadatas`` and ``ids`` in step; new UUIDs where
        ``ids`` is None) in adaptive batches; returns the ids. Any of them may be a generator:
        the texts are then streamed, never all in memory. ``progress(items_in_batch, budget)``
        is called after each batch. On a failure, the batches before it are stored and the
        exception gets ``zerorag_processed``, the count of leading texts written."""
        given = [c for c in (texts, metadatas, ids) if c is not None]
        lengths = [len(c) for c in given if isinstance(c, Sequence)]
        if len(lengths) == len(given) and len(set(lengths)) > 1:
            raise ValueError(
                "add_documents: texts, metadatas and ids must have the same length, got "
                + ", ".join(map(str, lengths))
            )
        total = lengths[0] if len(lengths) == len(given) else None
        written: list[str] = []
        with AccountedWrite(self._budget(), self.stats, total) as active:
            self.last_budget = active
            for batch in active.chunks(_rows(texts, metadatas, ids)):
                batch_texts = [row[0] for row in batch]
                batch_ids = [row[2] or uuid.uuid4().hex for row in batch]
                vectors = self.embedder.embed_documents(batch_texts)
                self.store.upsert(batch_ids, vectors, batch_texts, [row[1] for row in batch])
                written.extend(batch_ids)
                del vectors
                if progress is not None:
                    progress(len(batch), active)
        return written

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` stored texts closest to ``query``: dicts of ``id``, ``text``, ``metadata``
        and ``score`` (cosine similarity, higher is closer), best first."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} is not valid: expected a whole number >= 1")
        if self.count() == 0:
            return []
        return list(self.store.query(self.embedder.embed_query(query), k))

    def count(self) -> int:
        """How many texts the store holds."""
        return int(self.store.count())

    def store_figures(self) -> dict[str, Any]:
        """The backend, where it lives, the collection, its size and the embedder."""
        return {
            "backend": self.backend_name,
            "path": self.path,
            "collection": self.collection_name,
            "items": self.count(),
            "dimension": self.embedder.dimension,
            "embedder": self.embedder.name,
            "max_batch_size": self.store.max_batch_size,
        }

    def get_health_status(self) -> dict[str, Any]:
        """The monitor's report (``health_score``, ``memory_usage``, ``health_issues``, ...) plus
        ``store`` (:meth:`store_figures`) and ``writes`` (batches, sizes, cleanups, peak)."""
        health = (self.monitor or get_monitor()).get_health_status()
        health["store"] = self.store_figures()
        health["writes"] = self.stats.to_dict()
        return health
