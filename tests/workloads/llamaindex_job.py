"""A LlamaIndex ingestion job: stdlib files split into nodes, embedded and stored in a persistent
chroma collection, by the bare ``IngestionPipeline.run`` or by ``guard_pipeline(...).run``.

``python llamaindex_job.py DIRECTORY bare|guarded [--files N] [--embedder hashing|minilm]
[--over-loaded-mb D] [--num-workers N] [--no-cache] [--batch-size N]``. The embedding is the
project's adapter (``minilm``: all-MiniLM-L6-v2, the packaged weights, offline). The model is
loaded before anything is measured; with ``--over-loaded-mb`` the guarded run's ceiling is this
process's memory then plus D (the model's first calls pay their warm-up inside the budget, as a
user's job does). ``--batch-size`` is the guarded run's largest chunk, in documents. The
documents are read lazily, one by one, by a generator in both modes (the bare run takes a list:
it reads them all first). Prints one JSON line: nodes stored, seconds, the exact peak over the
run (the kernel's mark) and where it started, the ceiling and the budget's batches.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from collections.abc import Iterator
from typing import Any

FILES = sorted(glob.glob(os.path.dirname(os.__file__) + "/**/*.py", recursive=True))


def documents(count: int) -> Iterator[Any]:
    from llama_index.core import Document

    for path in FILES[:count]:
        with open(path, errors="replace") as f:
            yield Document(text=f.read(), id_=path, metadata={"path": os.path.basename(path)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("mode", choices=["bare", "guarded"])
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--embedder", choices=["hashing", "minilm"], default="hashing")
    parser.add_argument("--over-loaded-mb", type=float, default=None)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--no-cache", action="store_true", help="IngestionPipeline(disable_cache)")
    parser.add_argument("--batch-size", type=int, default=None, help="documents a chunk at most")
    args = parser.parse_args()

    import chromadb
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from zerorag_guard import get_monitor
    from zerorag_guard.integrations.llamaindex import embedding, guard_pipeline

    model = embedding(args.embedder)
    dimension = len(model.get_text_embedding("loaded"))  # loads the model before the budget
    client = chromadb.PersistentClient(
        path=os.path.join(args.directory, "chroma"),
        settings=chromadb.config.Settings(anonymized_telemetry=False),
    )
    coll = client.get_or_create_collection("nodes", embedding_function=None)
    pipe = IngestionPipeline(
        transformations=[SentenceSplitter(chunk_size=256), model],
        vector_store=ChromaVectorStore(chroma_collection=coll),
        disable_cache=args.no_cache,
    )
    probe = get_monitor().probe
    start_mb = probe.rss_mb()
    result: dict[str, Any] = {"mode": args.mode, "files": args.files, "dimension": dimension}
    window = probe.open_window(exact=True)  # the kernel's mark over the run, kept open
    began = time.perf_counter()
    if args.mode == "bare":
        pipe.run(documents=list(documents(args.files)), num_workers=args.num_workers)
    else:
        ceiling = None if args.over_loaded_mb is None else start_mb + args.over_loaded_mb
        run = guard_pipeline(pipe, limit_mb=ceiling, batch_size=args.batch_size)
        run.run(documents(args.files), return_nodes=False, num_workers=args.num_workers)
        budget = run.last_budget
        assert budget is not None
        result.update(
            ceiling_mb=None if ceiling is None else round(ceiling, 1),
            budget_peak_mb=round(budget.peak_mb, 1),
            batches=budget.batch_sizes,
            scope=budget.stats()["scope"],
        )
    seconds = time.perf_counter() - began
    stored = coll.count()
    result.update(
        stored=stored,
        seconds=round(seconds, 2),
        nodes_per_second=round(stored / seconds, 1),
        start_mb=round(start_mb, 1),
        peak_mb=round(window.close() / 2**20, 1),
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
