"""guard_store against the real stores: chromadb (persistent, in tmp_path), qdrant-client's local
mode, faiss-cpu and LangChain's InMemoryVectorStore. Each bulk write of 20,000 items lands exactly
once, in chunks that respect the store's own maximum and shrink when memory nears the limit; a
failing chunk leaves exactly the chunks before it, and the resume position finishes the job."""

from __future__ import annotations

import functools
import inspect
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
from budget_helpers import Steady, monitor_with

from zerorag_guard import get_monitor
from zerorag_guard.integrations.vectorstores import guard_store, store_kind

# The chunk sizes these tests assert come from memory (steady readings: slow start's); the
# writes' times, which vary on a loaded machine, must not cap them.
pytestmark = pytest.mark.usefixtures("no_pace")

chromadb = pytest.importorskip("chromadb")
qdrant_client = pytest.importorskip("qdrant_client")
faiss = pytest.importorskip("faiss")
pytest.importorskip("langchain_core")

N = 20_000
DIM = 8
IDS = [f"item-{i}" for i in range(N)]
VECTORS = np.random.default_rng(7).random((N, DIM), dtype=np.float32)


class StoreDown(RuntimeError):
    """What a store raises in these tests."""


class Spy:
    """Replaces a store method: records each call's item count, can fail on the n-th call,
    can run a hook before each call; keeps the method's signature."""

    def __init__(self, method: Callable[..., Any], field: str) -> None:
        self.method = method
        self.field = field
        self.signature = inspect.signature(method)
        self.sizes: list[int] = []
        self.fail_on: Optional[int] = None
        self.before: Optional[Callable[[int], None]] = None
        functools.update_wrapper(self, method)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        items = self.signature.bind(*args, **kwargs).arguments[self.field]
        items = getattr(items, "ids", items)  # qdrant's models.Batch
        if self.before is not None:
            self.before(len(self.sizes))
        if self.fail_on is not None and len(self.sizes) + 1 == self.fail_on:
            self.fail_on = None
            raise StoreDown("the store is down")
        result = self.method(*args, **kwargs)
        self.sizes.append(len(items) if hasattr(items, "__len__") else len(list(items)))
        return result


@dataclass
class Case:
    """How to make one store, write items ``[start:]`` to it, and list what it holds."""

    name: str
    make: Callable[[Path], Any]
    method: str
    field: str
    write: Callable[[Any, int], Any]
    stored: Callable[[Any], list[str]]


def _chroma(tmp_path: Path) -> Any:
    client = chromadb.PersistentClient(
        path=str(tmp_path / "chroma"),
        settings=chromadb.config.Settings(anonymized_telemetry=False),
    )
    return client.get_or_create_collection("guarded", embedding_function=None)


def _qdrant(tmp_path: Path) -> Any:
    models = qdrant_client.models
    client = qdrant_client.QdrantClient(":memory:")
    client.create_collection(
        "guarded", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT)
    )
    return client


def _qdrant_ids(client: Any) -> list[str]:
    points, _ = client.scroll("guarded", limit=N + 10, with_payload=False)
    return [f"item-{p.id}" for p in points]


def _langchain(tmp_path: Path) -> Any:
    from langchain_core.embeddings.fake import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    return InMemoryVectorStore(DeterministicFakeEmbedding(size=DIM))


CASES = [
    Case(
        "chromadb",
        _chroma,
        "upsert",
        "ids",
        lambda s, i: s.upsert(
            ids=IDS[i:], embeddings=VECTORS[i:], metadatas=[{"n": k} for k in range(i, N)]
        ),
        lambda raw: raw.get(include=[])["ids"],
    ),
    Case(
        "qdrant upsert(Batch)",
        _qdrant,
        "upsert",
        "points",
        lambda s, i: s.upsert(
            "guarded",
            points=qdrant_client.models.Batch(ids=list(range(i, N)), vectors=VECTORS[i:].tolist()),
        ),
        _qdrant_ids,
    ),
    Case(
        "qdrant upload_points(generator)",
        _qdrant,
        "upload_points",
        "points",
        lambda s, i: s.upload_points(
            "guarded",
            (
                qdrant_client.models.PointStruct(id=k, vector=VECTORS[k].tolist())
                for k in range(i, N)
            ),
        ),
        _qdrant_ids,
    ),
    Case(
        "qdrant upload_collection(numpy)",
        _qdrant,
        "upload_collection",
        "vectors",
        lambda s, i: s.upload_collection("guarded", vectors=VECTORS[i:], ids=list(range(i, N))),
        _qdrant_ids,
    ),
    Case(
        "faiss",
        lambda _: faiss.IndexIDMap2(faiss.IndexFlatL2(DIM)),
        "add_with_ids",
        "x",
        lambda s, i: s.add_with_ids(VECTORS[i:], np.arange(i, N, dtype=np.int64)),
        lambda raw: [f"item-{k}" for k in faiss.vector_to_array(raw.id_map).tolist()],
    ),
    Case(
        "langchain",
        _langchain,
        "add_texts",
        "texts",
        lambda s, i: s.add_texts([f"text {k}" for k in range(i, N)], ids=IDS[i:]),
        lambda raw: list(raw.store),
    ),
]


def _spied(case: Case, tmp_path: Path, **guard: Any) -> tuple[Any, Any, Spy]:
    raw = case.make(tmp_path)
    spy = Spy(getattr(raw, case.method), case.field)
    setattr(raw, case.method, spy)
    return raw, guard_store(raw, **guard), spy


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bulk_write_lands_every_item_exactly_once(case: Case, tmp_path: Path) -> None:
    raw, store, spy = _spied(case, tmp_path, batch_size=4000)
    case.write(store, 0)
    stored = case.stored(raw)
    assert len(stored) == N
    assert sorted(stored) == sorted(IDS)
    assert sum(spy.sizes) == N  # no item sent twice
    assert len(spy.sizes) > 1 and max(spy.sizes) <= 4000
    assert store.last_budget.batch_sizes == spy.sizes


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_failed_chunk_leaves_the_chunks_before_it_and_resume_completes(
    case: Case, tmp_path: Path
) -> None:
    # Steady readings: the chunk sizes are the slow start's, whatever the real memory does.
    monitor = monitor_with(Steady(100))
    raw, store, spy = _spied(case, tmp_path, batch_size=4000, monitor=monitor)
    spy.fail_on = 14  # slow start: 1, 2, 4, ..., 2048 (12 chunks), 4000, then the 14th fails
    with pytest.raises(StoreDown) as caught:
        case.write(store, 0)
    done = caught.value.zerorag_processed
    assert (
        done
        == sum(spy.sizes)
        == (1 + 2 + 4 + 8 + 16 + 32 + 64 + 128 + 256 + 512 + 1024 + 2048) + 4000
    )
    assert done + 4000 < N
    assert sorted(case.stored(raw)) == sorted(IDS[:done])
    assert store.write_stats()["errors"] == 1

    case.write(store, done)
    stored = case.stored(raw)
    assert len(stored) == N and sorted(stored) == sorted(IDS)
    assert sum(spy.sizes) == N


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_chunks_shrink_when_readings_approach_the_limit(case: Case, tmp_path: Path) -> None:
    reader = Steady(100)
    monitor = monitor_with(reader)
    raw, store, spy = _spied(case, tmp_path, limit_mb=500, batch_size=256, monitor=monitor)
    # Calls 10..15 see the job's memory near the limit; from 16 on it has room again.
    spy.before = lambda calls: setattr(reader, "mb", 470 if 10 <= calls < 16 else 100)
    case.write(store, 0)
    sizes = spy.sizes
    assert sizes[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 256]
    near = sizes[11:16]
    assert all(b < a for a, b in itertools.pairwise(near)) and max(near) < 256
    assert max(sizes[20:]) == 256  # room again: back to full size
    assert sorted(case.stored(raw)) == sorted(IDS)


def test_chroma_never_gets_a_batch_above_the_clients_maximum(tmp_path: Path) -> None:
    # Room enough for batches past the maximum whatever this process holds (a batch larger
    # than any measured grows by what the largest one cost, with the noise seen on top).
    room = get_monitor().rss_mb() + 2000
    raw, store, spy = _spied(CASES[0], tmp_path, batch_size=50_000, limit_mb=room)
    limit = raw._client.get_max_batch_size()
    CASES[0].write(store, 0)
    assert max(spy.sizes) == limit  # the client's own ceiling binds (5461 embedded)
    assert len(raw.get(include=[])["ids"]) == N


def test_chroma_maximum_is_read_from_the_client(tmp_path: Path) -> None:
    raw, store, spy = _spied(CASES[0], tmp_path, batch_size=5000)
    raw._client.get_max_batch_size = lambda: 1000
    CASES[0].write(store, 0)
    assert max(spy.sizes) == 1000
    assert spy.sizes.count(1000) >= 15
    assert raw.count() == N


def test_faiss_chunks_are_views_of_the_callers_array() -> None:
    raw = faiss.IndexFlatL2(DIM)
    seen: list[bool] = []
    original = raw.add

    def add(x: Any, numeric_type: Any = 0) -> Any:
        seen.append(np.shares_memory(x, VECTORS))
        return original(x)

    raw.add = add
    guard_store(raw, batch_size=1000).add(VECTORS)
    assert raw.ntotal == N and len(seen) > 5 and all(seen)


async def test_langchain_async_write_in_chunks() -> None:
    store = guard_store(_langchain(Path()), batch_size=300)
    texts = [f"text {k}" for k in range(2000)]
    ids = await store.aadd_texts(texts, ids=IDS[:2000])
    assert ids == IDS[:2000] and len(store.store) == 2000
    assert len(store.last_budget.batch_sizes) > 5 and max(store.last_budget.batch_sizes) == 300


def test_health_status_has_the_store_figures_and_write_statistics(tmp_path: Path) -> None:
    store = guard_store(_chroma(tmp_path), batch_size=3000)
    CASES[0].write(store, 0)
    health = store.get_health_status()
    assert {"health_score", "memory_usage", "health_issues"} <= set(health)
    assert health["store"]["items"] == N and health["store"]["name"] == "guarded"
    assert health["store"]["kind"] == "chromadb"
    writes = health["writes"]
    assert writes["items"] == N and writes["batch_size_max"] == 3000
    assert writes["batches"] == len(store.last_budget.batch_sizes)
    assert isinstance(writes["cleanups"], dict)


def test_the_proxy_is_the_store_for_everything_else(tmp_path: Path) -> None:
    raw = _chroma(tmp_path)
    store = guard_store(raw)
    assert isinstance(store, type(raw)) and store.name == "guarded"
    store.add(ids="one", embeddings=[[0.0] * DIM])  # a single item passes through whole
    assert store.count() == 1 and store.last_budget is None


def test_unequal_parallel_arguments_are_refused_before_any_write(tmp_path: Path) -> None:
    raw = _chroma(tmp_path)
    with pytest.raises(ValueError, match="ids=3, embeddings=2"):
        guard_store(raw).upsert(ids=["a", "b", "c"], embeddings=VECTORS[:2])
    assert raw.count() == 0


def test_store_kind_needs_a_known_store() -> None:
    assert store_kind(faiss.IndexFlatL2(2)) == "faiss"
    with pytest.raises(TypeError, match=r"cannot guard builtins\.dict"):
        guard_store({})


# -- per-item arguments wherever they sit ---------------------------------------------------------
def test_langchain_ids_through_kwargs_are_cut_with_the_documents() -> None:
    # langchain-chroma inherits VectorStore.add_documents(documents, **kwargs): ids arrive in
    # **kwargs. Cut without them, chunk 2 wrote "bar" over id "1" and "foo" was lost.
    langchain_chroma = pytest.importorskip("langchain_chroma")
    from langchain_core.documents import Document
    from langchain_core.embeddings.fake import DeterministicFakeEmbedding

    client = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False))
    raw = langchain_chroma.Chroma(
        collection_name="kwargs-ids",
        embedding_function=DeterministicFakeEmbedding(size=6),
        client=client,
    )
    store = guard_store(raw, monitor=monitor_with(Steady(100)))
    try:
        ids = store.add_documents(
            [Document(page_content=t, metadata={"t": t}) for t in ("foo", "bar")], ids=["1", "2"]
        )
        assert ids == ["1", "2"]
        assert store.last_budget.batch_sizes == [1, 1]  # slow start: it was cut
        got = raw.get_by_ids(["1", "2"])
        assert sorted((d.id, d.page_content) for d in got) == [("1", "foo"), ("2", "bar")]
    finally:
        raw.delete_collection()


def _spied_langchain() -> tuple[Any, Any, Spy]:
    raw = _langchain(Path())
    spy = Spy(raw.add_texts, "texts")
    raw.add_texts = spy
    return raw, guard_store(raw, batch_size=2, monitor=monitor_with(Steady(100))), spy


def test_an_unknown_list_argument_as_long_as_the_items_sends_the_write_whole() -> None:
    from zerorag_guard.integrations.vectorstores import UnplacedArgumentWarning

    raw, store, spy = _spied_langchain()
    texts = [f"text {k}" for k in range(5)]
    with pytest.warns(UnplacedArgumentWarning, match=r"'scores' holds 5 values"):
        ids = store.add_texts(texts, ids=IDS[:5], scores=[0.1] * 5)
    assert spy.sizes == [5] and ids == IDS[:5]  # one call, whole, nothing paired wrongly
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not on every write
        store.add_texts(texts, ids=IDS[5:10], scores=[0.1] * 5)
    assert spy.sizes == [5, 5] and sorted(raw.store) == sorted(IDS[:10])
    # A list of another length is not per item: the write is cut as usual.
    store.add_texts(texts, ids=IDS[10:15], tags=["a", "b"])
    assert spy.sizes[2:] == [1, 2, 2]


def test_with_streamed_items_any_unknown_list_argument_sends_the_write_whole() -> None:
    from zerorag_guard.integrations.vectorstores import UnplacedArgumentWarning

    _, store, spy = _spied_langchain()
    with pytest.warns(UnplacedArgumentWarning, match=r"stream.*'weights'"):
        store.add_texts((f"text {k}" for k in range(4)), weights=[1, 2, 3, 4])
    # One call with the whole stream (InMemoryVectorStore itself stores nothing from a
    # generator: it reads it twice, bare or guarded alike).
    assert len(spy.sizes) == 1


def test_a_write_of_no_item_or_one_returns_what_the_bare_write_returns() -> None:
    raw, store, _ = _spied_langchain()
    assert store.add_texts([]) == raw.add_texts([]) == []
    assert store.add_texts(["one"], ids=["x"]) == ["x"]
    assert store.last_budget is None  # nothing to cut: passed through


def test_a_single_chroma_metadata_mapping_for_many_ids_is_left_to_chroma(tmp_path: Path) -> None:
    from zerorag_guard.integrations.vectorstores import UnplacedArgumentWarning

    raw = _chroma(tmp_path)
    with (
        pytest.warns(UnplacedArgumentWarning, match="'metadatas' is not a sequence"),
        pytest.raises(ValueError),  # chroma's own refusal, not a corrupt write
    ):
        guard_store(raw).add(ids=["a", "b"], embeddings=VECTORS[:2], metadatas={"n": 1})
    assert raw.count() == 0


def test_a_write_starts_at_the_previous_writes_largest_batch(tmp_path: Path) -> None:
    # Against a persistent store each call has a fixed cost: the second write does not slow-start
    # again from one item.
    monitor = monitor_with(Steady(100))
    raw, store, spy = _spied(CASES[0], tmp_path, batch_size=500, monitor=monitor)
    store.upsert(ids=IDS[:2000], embeddings=VECTORS[:2000])
    assert spy.sizes[:3] == [1, 2, 4] and max(spy.sizes) == 500
    spy.sizes.clear()
    store.upsert(ids=IDS[2000:3000], embeddings=VECTORS[2000:3000])
    assert spy.sizes == [500, 500] and raw.count() == 3000


def test_no_write_starts_below_first_batch_size(tmp_path: Path) -> None:
    # What a streaming pipeline asks of its store (its chunks were measured whole): a small
    # write does not pull the next one back to slow start.
    raw, store, spy = _spied(
        CASES[0],
        tmp_path,
        batch_size=500,
        first_batch_size=300,
        monitor=monitor_with(Steady(100)),
    )
    store.upsert(ids=IDS[:2], embeddings=VECTORS[:2])
    store.upsert(ids=IDS[2:1000], embeddings=VECTORS[2:1000])
    assert spy.sizes == [2, 300, 500, 198] and raw.count() == 1000
