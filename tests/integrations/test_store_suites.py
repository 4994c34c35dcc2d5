"""LangChain's own standard vector-store suite (``langchain-tests``), bare and through the guard.

Each store runs ``VectorStoreIntegrationTests`` (sync and async) three times: bare, and through
``guard_store`` with chunks forced to 1 and to 2 items, so that every multi-item write of the
suite is cut into several chunks. A guarded store must fail no test that the bare one passes.

Tests the bare store itself fails are marked ``xfail`` (strict) with their reason, bare and
guarded alike; ``test_no_overrides_DO_NOT_OVERRIDE`` (part of the suite) checks that nothing
else was changed.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
from budget_helpers import Steady, monitor_with

pytest.importorskip("langchain_tests")
pytest.importorskip("langchain_chroma")
pytest.importorskip("langchain_qdrant")

from langchain_core.vectorstores import InMemoryVectorStore, VectorStore
from langchain_tests.integration_tests.vectorstores import (
    EMBEDDING_SIZE,
    VectorStoreIntegrationTests,
)

from zerorag_guard.integrations.vectorstores import guard_store

_names = itertools.count()


def _guarded(store: VectorStore, batch_size: Optional[int]) -> Any:
    # Steady readings: the suites test what a write does to the store, so the chunks must be
    # the slow start's (1, then 2, ...) whatever the test process's memory is by then.
    if batch_size is None:
        return store
    return guard_store(store, batch_size=batch_size, monitor=monitor_with(Steady(100)))


class _InMemory(VectorStoreIntegrationTests):
    batch_size: Optional[int] = None

    @pytest.fixture()
    def vectorstore(self) -> Iterator[VectorStore]:  # type: ignore[override]
        yield _guarded(InMemoryVectorStore(self.get_embeddings()), self.batch_size)


class _Chroma(VectorStoreIntegrationTests):
    batch_size: Optional[int] = None

    @pytest.fixture()
    def vectorstore(self) -> Iterator[VectorStore]:  # type: ignore[override]
        import chromadb
        from langchain_chroma import Chroma

        # An in-memory client; the embeddings come from the suite's fake model (no download).
        client = chromadb.EphemeralClient(
            settings=chromadb.config.Settings(anonymized_telemetry=False)
        )
        store = Chroma(
            collection_name=f"suite-{next(_names)}",
            embedding_function=self.get_embeddings(),
            client=client,
        )
        try:
            yield _guarded(store, self.batch_size)
        finally:
            store.delete_collection()


class _Qdrant(VectorStoreIntegrationTests):
    batch_size: Optional[int] = None

    @pytest.fixture()
    def vectorstore(self) -> Iterator[VectorStore]:  # type: ignore[override]
        from langchain_qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient, models

        client = QdrantClient(":memory:")  # qdrant-client's local mode
        client.create_collection(
            "suite",
            vectors_config=models.VectorParams(
                size=EMBEDDING_SIZE, distance=models.Distance.COSINE
            ),
        )
        try:
            yield _guarded(
                QdrantVectorStore(client, "suite", embedding=self.get_embeddings()),
                self.batch_size,
            )
        finally:
            client.close()


# What langchain-qdrant fails bare (qdrant-client local mode), and why. Marked on the bare and
# the guarded classes alike: strict, so a test that starts to pass is noticed.
_NOT_UUIDS = (
    "qdrant takes only unsigned integers and UUIDs as point ids; the suite's ids ('1', '2', "
    "'foo') are neither, so the store refuses them"
)
_WRONG_DOCUMENTS = (
    "langchain-qdrant returns documents without their id, with its own '_id' and "
    "'_collection_name' added to their metadata"
)
# name -> (why, what it raises); pydantic's ValidationError is a ValueError.
_QDRANT_FAILS_BARE: dict[str, tuple[str, type[BaseException]]] = {
    "test_add_documents": (_WRONG_DOCUMENTS, AssertionError),
    "test_add_documents_documents": (_WRONG_DOCUMENTS, AssertionError),
    "test_deleting_documents": (_NOT_UUIDS, ValueError),
    "test_deleting_bulk_documents": (_NOT_UUIDS, ValueError),
    "test_add_documents_with_ids_is_idempotent": (_NOT_UUIDS, ValueError),
    "test_add_documents_by_id_with_mutation": (_NOT_UUIDS, ValueError),
    "test_get_by_ids": (_NOT_UUIDS, ValueError),
    "test_add_documents_with_existing_ids": (
        "langchain-qdrant passes the id None of a document that has none on to PointStruct, "
        "which refuses it (pydantic ValidationError)",
        ValueError,
    ),
}


def _expected_failure(name: str, reason: str, raises: type[BaseException]) -> Callable[..., Any]:
    base = getattr(VectorStoreIntegrationTests, name)
    if inspect.iscoroutinefunction(base):

        async def test(self: Any, vectorstore: VectorStore) -> None:
            await base(self, vectorstore)

    else:

        def test(self: Any, vectorstore: VectorStore) -> None:  # type: ignore[misc]
            base(self, vectorstore)

    test.__name__ = test.__qualname__ = name
    return pytest.mark.xfail(reason=reason, raises=raises, strict=True)(test)


for _name, (_reason, _raises) in _QDRANT_FAILS_BARE.items():
    for _variant in (_name, f"{_name}_async"):
        setattr(_Qdrant, _variant, _expected_failure(_variant, _reason, _raises))


# Each store bare and guarded by 1 and by 2: TestInMemoryBare, TestChromaGuardedBy1, ...
for _store, _suite in (("InMemory", _InMemory), ("Chroma", _Chroma), ("Qdrant", _Qdrant)):
    for _label, _size in (("Bare", None), ("GuardedBy1", 1), ("GuardedBy2", 2)):
        _cls = type(f"Test{_store}{_label}", (_suite,), {"batch_size": _size})
        globals()[_cls.__name__] = _cls
