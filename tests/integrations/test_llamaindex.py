"""LlamaIndex: a guarded IngestionPipeline streams under the budget and stores what the bare one
stores; a guarded LlamaIndex vector store writes within chroma's maximum. Real llama-index-core,
llama-index-vector-stores-chroma and chromadb (persistent, in tmp_path), the project's hashing
embedding (the real model runs in ``test_real_model.py``'s subprocess style below)."""

from __future__ import annotations

import asyncio
import glob
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

chromadb = pytest.importorskip("chromadb")
pytest.importorskip("llama_index.core")
pytest.importorskip("llama_index.vector_stores.chroma")

from llama_index.core import Document  # noqa: E402
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.core.storage.docstore import SimpleDocumentStore  # noqa: E402
from llama_index.vector_stores.chroma import ChromaVectorStore  # noqa: E402

from zerorag_guard import get_monitor  # noqa: E402
from zerorag_guard.integrations.llamaindex import embedding, guard_pipeline  # noqa: E402
from zerorag_guard.integrations.vectorstores import guard_store  # noqa: E402
from zerorag_guard.memory.probes import MB  # noqa: E402

FILES = sorted(glob.glob(os.path.dirname(os.__file__) + "/**/*.py", recursive=True))
JOB = Path(__file__).parent.parent / "workloads" / "llamaindex_job.py"
#: Paragraphs of stdlib files, each a document of one node: past chroma's maximum for one add
#: (5,461). The tests over them embed in 16 numbers: what they show is the count, not the vectors
#: (the benchmark splits whole files with the real splitter).
PARAGRAPHS = 6000


def documents(count: int, start: int = 0) -> Iterator[Any]:
    for path in FILES[start : start + count]:
        with open(path, errors="replace") as f:
            yield Document(text=f.read(), id_=path, metadata={"path": os.path.basename(path)})


def paragraphs(count: int = PARAGRAPHS) -> Iterator[Any]:
    def every() -> Iterator[Any]:
        for path in FILES:
            with open(path, errors="replace") as f:
                text = f.read()
            for i, para in enumerate(p for p in text.split("\n\n") if p.strip()):
                yield Document(text=para, id_=f"{path}:{i}", metadata={"n": i})

    return itertools.islice(every(), count)


def node_id(i: int, doc: Any) -> str:
    """Node ids from the document and the position: a guarded and a bare run can be compared.
    A module-level function: a pipeline with ``num_workers`` pickles its transformations."""
    return f"{doc.id_}#{i}"


def run_job(directory: Path, *args: str, env: Optional[dict[str, str]] = None) -> Any:
    """``workloads/llamaindex_job.py`` in a process of its own; its report."""
    done = subprocess.run(
        [sys.executable, str(JOB), str(directory), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def splitter(size: int = 256) -> SentenceSplitter:
    return SentenceSplitter(chunk_size=size, chunk_overlap=min(200, size // 6), id_func=node_id)


def collection(tmp_path: Path, name: str = "docs") -> Any:
    client = chromadb.PersistentClient(
        path=str(tmp_path / "chroma"),
        settings=chromadb.config.Settings(anonymized_telemetry=False),
    )
    return client.get_or_create_collection(name, embedding_function=None)


def pipeline(coll: Any, docstore: Any = None, **kw: Any) -> IngestionPipeline:
    return IngestionPipeline(
        transformations=[splitter(), embedding()],
        vector_store=ChromaVectorStore(chroma_collection=coll),
        docstore=docstore,
        **kw,
    )


def stored(coll: Any) -> dict[str, tuple[Any, ...]]:
    got = coll.get(include=["documents", "metadatas", "embeddings"])
    return {
        i: (doc, json.dumps(meta, sort_keys=True), [round(float(x), 6) for x in emb])
        for i, doc, meta, emb in zip(
            got["ids"], got["documents"], got["metadatas"], got["embeddings"]
        )
    }


def test_past_chromas_maximum_the_bare_run_fails_and_the_guarded_one_stores_every_node(
    tmp_path: Path,
) -> None:
    maximum = collection(tmp_path)._client.get_max_batch_size()
    assert maximum < PARAGRAPHS  # the corpus is past chroma's maximum for one add

    def embed_and_store(coll: Any) -> IngestionPipeline:
        return IngestionPipeline(
            transformations=[embedding(dimension=16)],
            vector_store=ChromaVectorStore(chroma_collection=coll),
        )

    bare = collection(tmp_path, "bare")
    with pytest.raises(Exception, match="greater than max batch size"):
        embed_and_store(bare).run(documents=list(paragraphs()))
    assert bare.count() == 0  # nothing stored: every embedding lost

    guarded = collection(tmp_path, "guarded")
    probe = get_monitor().probe  # the budget's own: its windows share the kernel's mark
    ceiling = probe.rss_bytes() / MB + 400
    # Chunks of up to 1,000 documents: each write to a persistent chroma costs about 50 ms.
    run = guard_pipeline(embed_and_store(guarded), limit_mb=ceiling, batch_size=1000)
    window = probe.open_window(exact=True)  # the kernel's mark over the run
    assert run.run(paragraphs(), return_nodes=False) is None
    peak_mb = window.close() / MB
    budget = run.last_budget
    assert guarded.count() == PARAGRAPHS
    assert budget is not None and budget.processed == PARAGRAPHS
    assert max(peak_mb, budget.peak_mb) <= ceiling
    assert len(budget.batch_sizes) > 1


@pytest.mark.parametrize("with_docstore", [False, True])
def test_a_guarded_run_stores_what_a_bare_run_stores(tmp_path: Path, with_docstore: bool) -> None:
    bare, guarded = collection(tmp_path, "bare"), collection(tmp_path, "guarded")
    store_a = SimpleDocumentStore() if with_docstore else None
    store_b = SimpleDocumentStore() if with_docstore else None
    bare_nodes = pipeline(bare, store_a).run(documents=list(documents(12)))
    wrapped = guard_pipeline(pipeline(guarded, store_b), batch_size=4)
    nodes = wrapped.run(documents(12))
    assert [n.node_id for n in nodes] == [n.node_id for n in bare_nodes]
    assert stored(guarded) == stored(bare) and guarded.count() == len(bare_nodes) > 12
    assert wrapped.last_budget is not None and len(wrapped.last_budget.batch_sizes) >= 3
    if with_docstore:
        assert store_b is not None and store_a is not None
        assert set(store_b.docs) == set(store_a.docs)
        # A second run writes nothing new, as LlamaIndex's own does.
        again = wrapped.run(documents(12))
        assert again == [] and guarded.count() == len(bare_nodes)


def test_upserts_and_delete_deletes_once_for_the_whole_input(tmp_path: Path) -> None:
    coll = collection(tmp_path)
    docstore = SimpleDocumentStore()
    run = guard_pipeline(
        pipeline(coll, docstore, docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE),
        batch_size=2,
    )
    run.run(documents(8))
    assert len(docstore.docs) == 8
    kept = {m["path"] for m in coll.get(include=["metadatas"])["metadatas"]}
    assert len(kept) == 8  # no chunk deleted another chunk's documents
    run.run(documents(5))  # three documents gone from the input
    paths = {m["path"] for m in coll.get(include=["metadatas"])["metadatas"]}
    assert len(docstore.docs) == 5 and len(paths) == 5
    assert paths == {os.path.basename(p) for p in FILES[:5]}
    assert run.pipeline.docstore_strategy == DocstoreStrategy.UPSERTS_AND_DELETE  # restored


def test_arun_streams_an_async_generator(tmp_path: Path) -> None:
    coll = collection(tmp_path)

    async def source() -> Any:
        for doc in documents(6):
            yield doc

    run = guard_pipeline(pipeline(coll), batch_size=2)
    nodes = asyncio.run(run.arun(source()))
    assert nodes is not None and coll.count() == len(nodes) > 6
    assert run.last_budget is not None and run.last_budget.processed == 6


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    coll = collection(tmp_path)
    checkpoint = str(tmp_path / "ingest.ckpt")

    def failing(limit: int) -> Iterator[Any]:
        for i, doc in enumerate(documents(10)):
            if i == limit:
                raise RuntimeError("the reader died")
            yield doc

    run = guard_pipeline(pipeline(coll), batch_size=2, checkpoint=checkpoint)
    with pytest.raises(RuntimeError):
        run.run(failing(7), return_nodes=False)
    done = run.last_budget.processed if run.last_budget else 0
    assert 0 < done < 10
    run.run(documents(10), return_nodes=False)
    assert run.last_budget is not None and run.last_budget.skipped == done
    everything = collection(tmp_path / "b")
    pipeline(everything).run(documents=list(documents(10)))
    assert stored(coll) == stored(everything)


def test_a_guarded_llamaindex_store_writes_within_chromas_maximum(tmp_path: Path) -> None:
    nodes = list(paragraphs())
    embed = embedding(dimension=16)
    for node, vector in zip(nodes, embed.get_text_embedding_batch([n.text for n in nodes])):
        node.embedding = vector
    coll = collection(tmp_path)
    maximum = coll._client.get_max_batch_size()
    assert len(nodes) > maximum
    store = guard_store(ChromaVectorStore(chroma_collection=coll), batch_size=10_000)
    ids = store.add(nodes)
    assert ids == [n.node_id for n in nodes] and coll.count() == len(nodes)
    assert max(store.last_budget.batch_sizes) <= maximum and store.kind == "llamaindex"

    failing = guard_store(ChromaVectorStore(chroma_collection=collection(tmp_path, "failing")))
    broken = [*nodes[:150], nodes[0].model_copy(update={"embedding": [1.0]})]
    with pytest.raises(Exception) as info:
        failing.add(broken)
    assert 0 < info.value.zerorag_processed <= 150  # type: ignore[attr-defined]


def test_the_real_model_through_llamaindex_under_a_budget(tmp_path: Path) -> None:
    # all-MiniLM-L6-v2 through the project's adapter: 12 files, a few hundred nodes, a ceiling
    # 400 MB over the loaded model (its first calls pay their warm-up inside the budget).
    pytest.importorskip("sentence_transformers")
    files = 12
    args = ["guarded", "--embedder", "minilm", "--files", str(files), "--over-loaded-mb", "400"]
    report = run_job(tmp_path, *args)
    nodes = SentenceSplitter(chunk_size=256).get_nodes_from_documents(list(documents(files)))
    assert report["stored"] == len(nodes) >= 200 and report["dimension"] == 384
    assert report["peak_mb"] <= report["ceiling_mb"] * 1.02  # the real model's 2% (budget.md)


def test_a_pool_of_workers_stores_every_node_offline_and_counts_in_the_budget(
    tmp_path: Path,
) -> None:
    # num_workers=2: each chunk runs in LlamaIndex's spawn pool. Its workers rebuild the
    # splitter's tokenizer; without the packaged tokenizer files they download them, and
    # offline a bare run(num_workers=2) waits forever for a worker that died. The budget
    # counts the process tree: the workers' memory is in its peak, not in the process's.
    files = 12
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    report = run_job(tmp_path, "guarded", "--files", str(files), "--num-workers", "2", env=env)
    nodes = SentenceSplitter(chunk_size=256).get_nodes_from_documents(list(documents(files)))
    assert report["stored"] == len(nodes) >= 200
    assert report["scope"] == "tree"
    # Each worker imports LlamaIndex (about 100 MB here): the tree's peak is the process's
    # and at least one worker's.
    assert report["budget_peak_mb"] > report["peak_mb"] + 50


def test_the_tokenizer_files_are_shown_to_workers_for_the_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    run = guard_pipeline(pipeline(collection(tmp_path)))
    with run._workers(2):
        assert os.path.isdir(os.environ["TIKTOKEN_CACHE_DIR"])
    assert "TIKTOKEN_CACHE_DIR" not in os.environ
    with run._workers(None):
        assert "TIKTOKEN_CACHE_DIR" not in os.environ
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/the/users/own")
    with run._workers(2):
        assert os.environ["TIKTOKEN_CACHE_DIR"] == "/the/users/own"
    assert os.environ["TIKTOKEN_CACHE_DIR"] == "/the/users/own"
