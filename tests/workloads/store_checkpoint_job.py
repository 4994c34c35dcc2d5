"""A bulk upsert into a persistent chroma collection through ``guard_store(checkpoint=...)``.

``python store_checkpoint_job.py DIRECTORY N``: upserts ids ``id-0`` .. ``id-{N-1}`` (with
embeddings given: chroma's default embedding function would download a model) in one call;
the checkpoint is ``DIRECTORY/write.json``. Prints the collection's count when it finishes.
"""

from __future__ import annotations

import json
import sys

import chromadb
import numpy as np

from zerorag_guard.integrations.vectorstores import guard_store


def main() -> None:
    directory, count = sys.argv[1], int(sys.argv[2])
    client = chromadb.PersistentClient(
        path=f"{directory}/chroma", settings=chromadb.config.Settings(anonymized_telemetry=False)
    )
    collection = client.get_or_create_collection("kills", embedding_function=None)
    store = guard_store(collection, batch_size=40, checkpoint=f"{directory}/write.json")
    rng = np.random.default_rng(0)
    store.upsert(
        ids=[f"id-{i}" for i in range(count)],
        embeddings=rng.random((count, 8), dtype=np.float32),
        documents=[f"document {i}" for i in range(count)],
    )
    print(json.dumps({"count": collection.count(), "skipped": store.last_budget.skipped}))


if __name__ == "__main__":
    main()
