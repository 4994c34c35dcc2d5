"""LlamaIndex: ingestion pipelines that stream under a memory budget, and guarded vector stores.

``IngestionPipeline.run(documents=...)`` builds every node and every embedding before it writes
one, then hands them all to one ``vector_store.add``: memory follows the corpus, and past the
store's own maximum (chroma's 5,461 for the embedded client) the write fails and every embedding
is lost. :func:`guard_pipeline` streams instead: documents, from any iterable (a generator
included), go through the pipeline in adaptive chunks, each chunk transformed, stored (vector
store and docstore) and dropped before the next is read. Each chunk is a call of the
pipeline's own ``run`` (``arun``), so its semantics hold: the cache, the docstore's
deduplication and ``docstore_strategy`` (``upserts_and_delete`` deletes, once at the end, the
documents the whole input no longer has), ``num_workers`` (the budget then counts the process
tree, the pool's workers included). With ``return_nodes=False`` nothing is kept: a corpus of any
size fits.

``guard_store(vector_store)`` guards a LlamaIndex ``BasePydanticVectorStore`` (``add`` and
``async_add`` of nodes) as it guards the other stores: chunked under the budget, never above
the underlying chroma client's maximum, the ids returned as the bare call returns them, and a
failure mid-way carrying ``zerorag_processed``. Nothing here imports LlamaIndex until used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Optional, Union

from ..budget.budget import MemoryBudget
from ..budget.guarded import memory_budget
from ..monitor.monitor import MemoryMonitor
from .vectorstores import GuardedStore, guard_store

__all__ = ["GuardedPipeline", "guard_pipeline"]
#: The largest write of nodes a streaming run makes (lower where the store's maximum is).
STORE_BATCH = 2000


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block (``name`` was not set)."""
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _recording(documents: Iterable[Any], seen: set[str]) -> Iterator[Any]:
    for document in documents:
        seen.add(document.id_)
        yield document


async def _arecording(
    documents: Union[AsyncIterable[Any], Iterable[Any]], seen: set[str]
) -> AsyncIterator[Any]:
    if isinstance(documents, AsyncIterable):
        async for document in documents:
            seen.add(document.id_)
            yield document
    else:
        for document in documents:
            seen.add(document.id_)
            yield document


class GuardedPipeline:
    """An ``IngestionPipeline`` whose ``run``/``arun`` stream documents in adaptive chunks (see
    :func:`guard_pipeline`). Every other attribute is the pipeline's. ``last_budget`` is the
    budget of the latest run (its ``batch_sizes``, ``processed``, ``peak_mb``)."""

    def __init__(self, pipeline: Any, budget: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self._budget = budget
        self.last_budget: Optional[MemoryBudget] = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)

    def _settings(self, num_workers: Optional[int]) -> dict[str, Any]:
        settings = dict(self._budget)
        if num_workers and num_workers > 1 and settings["scope"] == "auto":
            settings["scope"] = "tree"  # the pool's worker processes hold the chunk too
        return settings

    def _begin(self) -> tuple[tuple[Any, Any], bool, Any]:
        """Swap in the streaming parts; returns what to restore, whether to delete at the end,
        and the (guarded) vector store."""
        from llama_index.core.ingestion import DocstoreStrategy

        p = self.pipeline
        saved = (p.vector_store, p.docstore_strategy)
        deletes = bool(
            p.docstore is not None
            and p.vector_store is not None
            and p.docstore_strategy == DocstoreStrategy.UPSERTS_AND_DELETE
        )
        if deletes:  # per chunk, a delete would take every document of the other chunks
            p.docstore_strategy = DocstoreStrategy.UPSERTS
        if p.vector_store is not None and not isinstance(p.vector_store, GuardedStore):
            # Nested in the run's budget, the store's writes inherit its ceiling; their chunks
            # count nodes, up to the store's own maximum. A write over the ceiling is the
            # chunk's doing (its nodes are already in memory): the write goes on, says so, and
            # the run's sizer halves the next chunk, raising only if a chunk of one still fails.
            # The run's sizer measured the chunk whole, its write included: the write need not
            # slow-start (each call of a persistent chroma costs about 60 ms whatever its size).
            p.vector_store = guard_store(
                p.vector_store,
                monitor=self._budget["monitor"],
                batch_size=STORE_BATCH,
                on_exceed="warn",
                first_batch_size=STORE_BATCH,
            )
        return saved, deletes, p.vector_store

    def _end(self, saved: tuple[Any, Any]) -> None:
        self.pipeline.vector_store, self.pipeline.docstore_strategy = saved

    def _workers(self, num_workers: Optional[int]) -> contextlib.AbstractContextManager[None]:
        """With a pool (``num_workers`` > 1), make LlamaIndex's packaged tokenizer files
        visible to its workers for the run.

        LlamaIndex points tiktoken at the files it ships only while it builds its tokenizer, in
        this process; a spawned worker that unpickles a ``SentenceSplitter`` builds it again
        without them, downloads them, and offline dies: the pool waits for it forever (a bare
        ``run(num_workers=2)`` with a ``SentenceSplitter`` alone hung so here).
        """
        if not num_workers or num_workers < 2 or "TIKTOKEN_CACHE_DIR" in os.environ:
            return contextlib.nullcontext()
        import llama_index.core

        cache = os.path.join(
            os.path.dirname(llama_index.core.__file__), "_static", "tiktoken_cache"
        )
        return _environ("TIKTOKEN_CACHE_DIR", cache)

    def _missing(self, seen: set[str]) -> list[str]:
        """The documents in the docstore that this run's input no longer has."""
        existing = set(self.pipeline.docstore.get_all_document_hashes().values())
        return sorted(existing - seen)

    def run(
        self,
        documents: Iterable[Any],
        *,
        return_nodes: bool = True,
        num_workers: Optional[int] = None,
        **kwargs: Any,
    ) -> Optional[list[Any]]:
        """Run the pipeline over ``documents`` chunk by chunk; the nodes, or None with
        ``return_nodes=False``. Other arguments go to each chunk's ``pipeline.run``."""
        nodes: list[Any] = []
        seen: set[str] = set()
        saved, deletes, store = self._begin()
        try:
            with self._workers(num_workers), memory_budget(**self._settings(num_workers)) as budget:
                self.last_budget = budget
                for chunk in budget.chunks(_recording(documents, seen)):
                    out = self.pipeline.run(documents=chunk, num_workers=num_workers, **kwargs)
                    if return_nodes:
                        nodes.extend(out)
                    del out
            if deletes:
                for doc_id in self._missing(seen):
                    self.pipeline.docstore.delete_document(doc_id)
                    store.delete(doc_id)
        finally:
            self._end(saved)
        return nodes if return_nodes else None

    async def arun(
        self,
        documents: Union[AsyncIterable[Any], Iterable[Any]],
        *,
        return_nodes: bool = True,
        num_workers: Optional[int] = None,
        **kwargs: Any,
    ) -> Optional[list[Any]]:
        """:meth:`run` with the pipeline's ``arun``, over an async or a plain iterable."""
        nodes: list[Any] = []
        seen: set[str] = set()
        saved, deletes, store = self._begin()
        try:
            with self._workers(num_workers):
                async with memory_budget(**self._settings(num_workers)) as budget:
                    self.last_budget = budget
                    async for chunk in budget.achunks(_arecording(documents, seen)):
                        out = await self.pipeline.arun(
                            documents=chunk, num_workers=num_workers, **kwargs
                        )
                        if return_nodes:
                            nodes.extend(out)
                        del out
            if deletes:
                for doc_id in self._missing(seen):
                    await self.pipeline.docstore.adelete_document(doc_id)
                    await store.adelete(doc_id)
        finally:
            self._end(saved)
        return nodes if return_nodes else None


def guard_pipeline(
    pipeline: Any,
    limit_mb: Union[float, str, None] = None,
    *,
    increase_mb: Union[float, str, None] = None,
    on_exceed: str = "cleanup",
    batch_size: Optional[int] = None,
    min_batch_size: int = 1,
    max_batch_size: Optional[int] = None,
    monitor: Optional[MemoryMonitor] = None,
    scope: str = "auto",
    checkpoint: Optional[str] = None,
    reset_checkpoint: bool = False,
) -> GuardedPipeline:
    """Wrap a LlamaIndex ``IngestionPipeline`` so that ``run``/``arun`` stream documents in
    adaptive chunks under a memory budget.

    The budget arguments are those of :func:`~zerorag_guard.memory_budget` (checked here);
    ``batch_size`` is the target number of documents a chunk (default ``BATCH_SIZE``).
    ``checkpoint`` makes a killed run resume after the last chunk it stored (the documents must
    come in the same order; a document's ``id_`` is its key).
    """
    if not hasattr(pipeline, "run") or not hasattr(pipeline, "transformations"):
        raise TypeError(
            f"guard_pipeline() expects a llama_index IngestionPipeline, got "
            f"{type(pipeline).__module__}.{type(pipeline).__qualname__}"
        )
    settings: dict[str, Any] = {
        "limit_mb": limit_mb,
        "increase_mb": increase_mb,
        "on_exceed": on_exceed,
        "batch_size": batch_size,
        "min_batch_size": min_batch_size,
        "max_batch_size": max_batch_size,
        "monitor": monitor,
        "scope": scope,
        "name": "llamaindex.pipeline",
    }
    if checkpoint is not None:
        settings.update(checkpoint=checkpoint, key=_document_id, reset_checkpoint=reset_checkpoint)
    memory_budget(**settings)  # checks the arguments now
    return GuardedPipeline(pipeline, settings)


def _document_id(document: Any) -> str:
    return str(document.id_)


def embedding(name: str = "hashing", dimension: int = 384, batch_size: int = 32) -> Any:
    """The project's embedder ``name`` (``hashing`` or ``minilm``, see
    :func:`zerorag_guard.rag.embedders.make_embedder`) as a LlamaIndex ``BaseEmbedding``, for a
    pipeline's transformations."""
    from ._llamaindex_embedding import ZeroragEmbedding

    return ZeroragEmbedding(
        embedder_name=name, dimension=dimension, embed_batch_size=batch_size, model_name=name
    )
