"""The batch workloads every benchmark runs: an embed-like function over 100-item batches.

``embed_batch`` is pure Python (hashing tokens into a small dense vector, about 0.5 ms for 100
short texts here); ``embed_batch_numpy`` does the same work with numpy.
"""

from __future__ import annotations

import zlib

import numpy as np

DIM = 64
TEXTS = [f"passage {i}: the quick brown fox jumps over the lazy dog {i % 97}" for i in range(100)]


def embed_batch(texts: list[str]) -> list[list[float]]:
    out = []
    for text in texts:
        vec = [0.0] * DIM
        for token in text.split():
            h = zlib.crc32(token.encode())
            vec[h % DIM] += 1.0 if h & 1 else -1.0
        norm = sum(v * v for v in vec) ** 0.5 or 1.0
        out.append([v / norm for v in vec])
    return out


def embed_batch_numpy(texts: list[str]) -> np.ndarray:
    rows = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, text in enumerate(texts):
        hashes = np.fromiter((zlib.crc32(t.encode()) for t in text.split()), dtype=np.uint64)
        np.add.at(rows[i], (hashes % DIM).astype(np.intp), np.where(hashes & 1, 1.0, -1.0))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)
