"""The project's embedders (:mod:`zerorag_guard.rag.embedders`) as a LlamaIndex ``BaseEmbedding``.

A module of its own, imported only by :func:`zerorag_guard.integrations.llamaindex.embedding`:
it imports LlamaIndex at the top, and its class must be importable by name, so that a
pipeline with ``num_workers`` (a spawn pool) can pickle it.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.embeddings import BaseEmbedding
from pydantic import PrivateAttr

from ..rag.embedders import make_embedder


class ZeroragEmbedding(BaseEmbedding):
    """``hashing`` (fast, deterministic) or ``minilm`` (all-MiniLM-L6-v2, the packaged
    weights, offline) as a LlamaIndex embedding of ``dimension`` numbers."""

    embedder_name: str = "hashing"
    dimension: int = 384
    _embedder: Any = PrivateAttr(default=None)

    def _get(self) -> Any:
        if self._embedder is None:
            self._embedder = make_embedder(self.embedder_name, self.dimension)
        return self._embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return [float(x) for x in self._get().embed_query(query)]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in row] for row in self._get().embed_documents(texts)]

    def __getstate__(self) -> dict[Any, Any]:  # the loaded model stays behind
        state = super().__getstate__()
        state["__pydantic_private__"] = {"_embedder": None}
        return state
