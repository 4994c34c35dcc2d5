"""A RAG ingestion with the real embedding model: stdlib passages embedded by all-MiniLM-L6-v2
(the packaged weights, offline) and added to an in-memory chroma collection.

Run as ``python model_job.py fixed|guarded --passages N [--batch B] [--over-loaded-mb D]``.
``fixed`` embeds batches of exactly ``B`` passages; ``guarded`` sizes them with
``memory_budget(limit_mb=loaded + D).chunks()``, where ``loaded`` is this process's memory once
the model is loaded (before its first call, which pays its warm-up inside the budget, as a
user's job does). Prints one JSON line: the loaded memory, the ceiling, the exact peak of the
ingestion (a kernel peak window held open over it), the passages stored, the batches and the
time; or, when the budget cannot be kept, what ``MemoryBudgetExceeded`` said.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["fixed", "guarded"])
    parser.add_argument("--passages", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--over-loaded-mb", type=float, default=300.0)
    args = parser.parse_args()

    import chromadb

    from zerorag_guard import MemoryBudgetExceeded, get_monitor, memory_budget
    from zerorag_guard.rag.demo import Corpus, stdlib_files
    from zerorag_guard.rag.embedders import SentenceTransformerEmbedder

    passages = [p for p, _, _ in itertools.islice(iter(Corpus(stdlib_files())), args.passages)]
    client = chromadb.EphemeralClient()
    # No embedding function: chroma's default one would download a model.
    collection = client.create_collection("passages", embedding_function=None)
    embedder = SentenceTransformerEmbedder()
    probe = get_monitor().probe
    loaded_mb = probe.rss_mb()
    done = 0

    def ingest(batch: list[str]) -> None:
        nonlocal done
        vectors = embedder.embed_documents(batch)
        ids = [f"p{done + k}" for k in range(len(batch))]
        collection.add(ids=ids, embeddings=vectors, documents=batch)
        done += len(batch)

    result: dict[str, Any] = {"mode": args.mode, "loaded_mb": round(loaded_mb, 1)}
    window = probe.open_window(exact=True)  # the kernel's mark over the ingestion, kept open
    start = time.perf_counter()
    if args.mode == "fixed":
        sizes = []
        for i in range(0, len(passages), args.batch):
            ingest(passages[i : i + args.batch])
            sizes.append(len(passages[i : i + args.batch]))
    else:
        limit_mb = loaded_mb + args.over_loaded_mb
        result["limit_mb"] = round(limit_mb, 1)
        budget = memory_budget(limit_mb=limit_mb, batch_size=64)
        try:
            with budget:
                for batch in budget.chunks(passages):
                    ingest(batch)
        except MemoryBudgetExceeded as exc:
            result["exceeded"] = {
                "processed": exc.processed,
                "smallest_batch": exc.smallest_batch,
                "rss_mb": exc.rss_mb,
                "message": str(exc).splitlines()[0],
            }
        sizes = budget.batch_sizes
        result["budget_peak_mb"] = budget.peak_mb
        result["cleanups"] = [
            (c.strategy, round(c.seconds, 3), round(c.freed_bytes / 2**20, 1))
            for c in budget.cleanups
        ]
    seconds = time.perf_counter() - start
    result.update(
        peak_mb=round(window.close() / 2**20, 1),
        stored=collection.count(),
        passages=len(passages),
        batches=len(sizes),
        max_batch=max(sizes, default=0),
        sizes=sizes,
        seconds=round(seconds, 2),
        passages_per_second=round(done / seconds, 2) if seconds else None,
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
