"""Property tests: a write through the guard leaves the native store exactly as the bare write.

Hypothesis draws items and their optional per-item fields, and a chunk size from 1 to 7; the
same write goes to a bare store and, through ``guard_store``, to a second one. The two must end
equal, field by field. The readings are steady, so the chunks are the slow start's (1, 2, 4, ...
up to the chunk size) whatever the machine's memory does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from budget_helpers import Steady, monitor_with
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zerorag_guard.integrations.vectorstores import guard_store

chromadb = pytest.importorskip("chromadb")
qdrant_client = pytest.importorskip("qdrant_client")
faiss = pytest.importorskip("faiss")
models = qdrant_client.models

DIM = 3
EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
chunk_sizes = st.integers(min_value=1, max_value=7)
counts = st.integers(min_value=0, max_value=24)
finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
vectors = st.lists(finite, min_size=DIM, max_size=DIM)
scalars = st.one_of(st.integers(-100, 100), st.text(max_size=5), st.booleans())
metadata = st.dictionaries(st.sampled_from(["a", "b", "c"]), scalars, min_size=1, max_size=3)
_names = itertools.count()
# Every field must be placed: a write sent whole for want of placing one would prove nothing.
pytestmark = pytest.mark.filterwarnings(
    "error::zerorag_guard.integrations.vectorstores.UnplacedArgumentWarning"
)


def _cut(store: Any, n: int, chunk: int) -> None:
    """The guarded write went in chunks of at most ``chunk`` that add up to its ``n`` items."""
    if n > 1:
        sizes = store.last_budget.batch_sizes
        assert sum(sizes) == n and max(sizes) <= chunk and len(sizes) >= -(-n // chunk)


def _guarded(store: Any, chunk: int) -> Any:
    return guard_store(store, batch_size=chunk, monitor=monitor_with(Steady(100)))


def _outcome(write: Any) -> Any:
    """What a write raised (its type), or None: a write the bare store refuses (qdrant's empty
    update) must be refused through the guard too."""
    try:
        write()
    except Exception as exc:
        return type(exc)
    return None


# -- chromadb -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chroma() -> Iterator[tuple[Any, Any]]:
    # One pair of collections for every example, emptied before each: a collection created
    # and dropped per example keeps its memory in the client (1.2 GB after 400 of them).
    client = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False))
    pair = tuple(
        client.create_collection(f"{side}-{next(_names)}", embedding_function=None)
        for side in ("bare", "guarded")
    )
    yield pair
    for collection in pair:
        client.delete_collection(collection.name)


def _emptied(collection: Any) -> Any:
    ids = collection.get(include=[])["ids"]
    if ids:
        collection.delete(ids=ids)
    assert collection.count() == 0
    return collection


@st.composite
def chroma_writes(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(counts.filter(lambda k: k > 0))
    ids = draw(
        st.lists(st.text("abcdef0123", min_size=1, max_size=6), min_size=n, max_size=n, unique=True)
    )
    write: dict[str, Any] = {
        "ids": ids,
        "embeddings": draw(st.lists(vectors, min_size=n, max_size=n)),
    }
    if draw(st.booleans()):
        write["embeddings"] = np.asarray(write["embeddings"], dtype=np.float32)
    for field, values in (
        ("documents", st.text(min_size=1, max_size=8)),
        ("metadatas", metadata),
        ("uris", st.text("xyz/.", min_size=1, max_size=8)),
    ):
        if draw(st.booleans()):
            write[field] = draw(st.lists(values, min_size=n, max_size=n))
    return write


def _chroma_contents(collection: Any) -> list[tuple[Any, ...]]:
    got = collection.get(include=["embeddings", "documents", "metadatas", "uris"])
    rows = zip(
        got["ids"],
        [tuple(np.round(e, 4)) for e in got["embeddings"]],
        got["documents"],
        got["metadatas"],
        got["uris"],
    )
    return sorted(rows, key=lambda row: row[0])


@EXAMPLES
@given(write=chroma_writes(), chunk=chunk_sizes, method=st.sampled_from(["add", "upsert"]))
def test_chroma_guarded_write_equals_bare(
    chroma: tuple[Any, Any], write: dict[str, Any], chunk: int, method: str
) -> None:
    bare, through = (_emptied(collection) for collection in chroma)
    getattr(bare, method)(**write)
    store = _guarded(through, chunk)
    getattr(store, method)(**write)
    assert _chroma_contents(through) == _chroma_contents(bare)
    _cut(store, len(write["ids"]), chunk)


# -- qdrant-client (local mode) -------------------------------------------------------------------
def _qdrant(named: bool) -> Any:
    client = qdrant_client.QdrantClient(":memory:")
    params = models.VectorParams(size=DIM, distance=models.Distance.EUCLID)
    client.create_collection("p", vectors_config={"v": params} if named else params)
    return client


def _qdrant_contents(client: Any) -> list[tuple[Any, ...]]:
    points, _ = client.scroll("p", limit=1000, with_payload=True, with_vectors=True)
    return sorted(
        (
            (
                p.id,
                p.payload,
                repr(
                    {k: np.round(v, 4).tolist() for k, v in p.vector.items()}
                    if isinstance(p.vector, dict)
                    else np.round(p.vector, 4).tolist()
                ),
            )
            for p in points
        ),
        key=lambda row: str(row[0]),
    )


@st.composite
def qdrant_writes(draw: st.DrawFn) -> tuple[str, bool, dict[str, Any]]:
    n = draw(counts)
    ids = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    raw = draw(st.lists(vectors, min_size=n, max_size=n))
    payloads = draw(st.one_of(st.none(), st.lists(metadata, min_size=n, max_size=n)))
    named = draw(st.booleans())
    shape = draw(st.sampled_from(["batch", "points", "upload_points", "upload_collection"]))

    def vector(k: int) -> Any:
        return {"v": raw[k]} if named else raw[k]

    if shape == "batch":
        batch_vectors: Any = {"v": raw} if named else raw
        return (
            "upsert",
            named,
            {"points": models.Batch(ids=ids, vectors=batch_vectors, payloads=payloads)},
        )
    structs = [
        models.PointStruct(
            id=i, vector=vector(k), payload=None if payloads is None else payloads[k]
        )
        for k, i in enumerate(ids)
    ]
    if shape == "points":
        return "upsert", named, {"points": structs}
    if shape == "upload_points":
        as_stream = draw(st.booleans())
        return "upload_points", named, {"points": iter(structs) if as_stream else structs}
    array = np.asarray(raw, dtype=np.float32).reshape(n, DIM)
    collection_vectors: Any = {"v": array} if named else draw(st.sampled_from([array, raw]))
    write: dict[str, Any] = {"vectors": collection_vectors, "ids": ids}
    if payloads is not None:
        write["payload"] = payloads
    return "upload_collection", named, write


@EXAMPLES
@given(case=qdrant_writes(), chunk=chunk_sizes)
def test_qdrant_guarded_write_equals_bare(
    case: tuple[str, bool, dict[str, Any]], chunk: int
) -> None:
    method, named, write = case
    bare, through = _qdrant(named), _qdrant(named)
    stream = write.get("points")
    if stream is not None and not isinstance(stream, (list, models.Batch)):
        items = list(stream)  # a generator can be read once: give each store its own
        write_bare, write_guarded = {"points": iter(items)}, {"points": iter(items)}
    else:
        write_bare = write_guarded = write
    try:
        refused = _outcome(lambda: getattr(bare, method)("p", **write_bare))
        guarded = _guarded(through, chunk)
        assert _outcome(lambda: getattr(guarded, method)("p", **write_guarded)) is refused
        assert _qdrant_contents(through) == _qdrant_contents(bare)
        if refused is None:
            _cut(guarded, len(_qdrant_contents(bare)), chunk)
    finally:
        bare.close()
        through.close()


# -- faiss ----------------------------------------------------------------------------------------
@EXAMPLES
@given(
    n=counts,
    chunk=chunk_sizes,
    data=st.data(),
)
def test_faiss_guarded_add_with_ids_equals_bare(n: int, chunk: int, data: st.DataObject) -> None:
    rows = np.asarray(data.draw(st.lists(vectors, min_size=n, max_size=n)), dtype=np.float32)
    rows = rows.reshape(n, DIM)
    ids = np.asarray(
        data.draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n, unique=True)),
        dtype=np.int64,
    )
    bare = faiss.IndexIDMap2(faiss.IndexFlatL2(DIM))
    through = faiss.IndexIDMap2(faiss.IndexFlatL2(DIM))
    bare.add_with_ids(rows, ids)
    guarded = _guarded(through, chunk)
    guarded.add_with_ids(rows, ids)
    _cut(guarded, n, chunk)
    assert through.ntotal == bare.ntotal == n
    assert faiss.vector_to_array(through.id_map).tolist() == ids.tolist()
    for key in ids.tolist():
        assert through.reconstruct(key).tolist() == bare.reconstruct(key).tolist()
