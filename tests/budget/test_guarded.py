"""@memory_guarded: every kind of function, chunk=, statistics, and wrong arguments."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest
from budget_helpers import Steady, monitor_with

from zerorag_guard import MemoryBudgetExceeded, get_monitor, memory_budget, memory_guarded


def test_bare_and_with_arguments() -> None:
    @memory_guarded
    def double(x: int) -> int:
        """Double it."""
        return 2 * x

    @memory_guarded(limit_mb=100_000, name="tripler")
    def triple(x: int) -> int:
        return 3 * x

    assert double(4) == 8 and triple(4) == 12
    assert double.__name__ == "double" and double.__doc__ == "Double it."
    assert inspect.signature(double) == inspect.signature(double.__wrapped__)  # type: ignore[attr-defined]
    assert list(inspect.signature(double).parameters) == ["x"]
    assert double.__wrapped__(5) == 10  # type: ignore[attr-defined]
    ops = get_monitor().operations()
    assert ops["tripler"]["calls"] == 1
    assert ops[f"{__name__}.test_bare_and_with_arguments.<locals>.double"]["calls"] == 1


def test_kinds_are_kept() -> None:
    @memory_guarded
    async def coro(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    @memory_guarded
    def gen(n: int):  # type: ignore[no-untyped-def]
        yield from range(n)

    @memory_guarded
    async def agen(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield i

    assert inspect.iscoroutinefunction(coro)
    assert inspect.isgeneratorfunction(gen)
    assert inspect.isasyncgenfunction(agen)
    assert asyncio.run(coro(1)) == 2
    assert list(gen(4)) == [0, 1, 2, 3]

    async def collect() -> list[int]:
        return [i async for i in agen(3)]

    assert asyncio.run(collect()) == [0, 1, 2]
    ops = get_monitor().operations()
    assert {name.rsplit(".", 1)[-1]: op["calls"] for name, op in ops.items()} == {
        "coro": 1,
        "gen": 1,
        "agen": 1,
    }


def test_methods_classmethods_staticmethods() -> None:
    class Store:
        def __init__(self) -> None:
            self.items: list[str] = []

        @memory_guarded(chunk="texts")
        def add(self, texts: list[str]) -> list[int]:
            self.items.extend(texts)
            return [len(t) for t in texts]

        @memory_guarded
        @classmethod
        def build(cls) -> Store:
            return cls()

        @memory_guarded
        @staticmethod
        def version() -> str:
            return "1"

    store = Store.build()
    assert isinstance(store, Store)
    assert Store.version() == "1" and store.version() == "1"
    assert store.add(["a", "bb", "ccc"] * 100) == [1, 2, 3] * 100
    assert store.items == ["a", "bb", "ccc"] * 100


def test_errors_are_counted_and_raised() -> None:
    @memory_guarded(name="flaky")
    def flaky(fail: bool) -> int:
        if fail:
            raise ValueError("boom")
        return 1

    seen = []
    get_monitor().add_listener(seen.append)
    for i in range(20):
        if i % 2:
            with pytest.raises(ValueError):
                flaky(True)
        else:
            flaky(False)
    op = get_monitor().operations()["flaky"]
    assert op["calls"] == 20 and op["errors"] == 10
    assert [a.kind for a in seen].count("error_rate") == 1


def test_chunk_splits_sequences_in_step_and_concatenates() -> None:
    chunks: list[tuple[list[str], list[int], str]] = []

    # Steady readings: the chunk sizes are the slow start's, 1, 2, 4, ... up to batch_size.
    @memory_guarded(chunk=("texts", "ids"), batch_size=50, monitor=monitor_with(Steady(100)))
    def upsert(texts: list[str], ids: list[int], prefix: str = "") -> list[str]:
        chunks.append((list(texts), list(ids), prefix))
        return [f"{prefix}{i}:{t}" for t, i in zip(texts, ids)]

    texts = [f"t{i}" for i in range(1000)]
    out = upsert(texts, list(range(1000)), prefix="#")
    assert out == [f"#{i}:t{i}" for i in range(1000)]
    # The chunks themselves: consecutive slices, in order, in step, the other arguments whole.
    sizes = [len(t) for t, _, _ in chunks]
    assert sizes == [1, 2, 4, 8, 16, 32] + [50] * 18 + [37]
    start = 0
    for chunk_texts, chunk_ids, prefix in chunks:
        stop = start + len(chunk_texts)
        assert chunk_texts == texts[start:stop] and chunk_ids == list(range(start, stop))
        assert prefix == "#"
        start = stop
    assert start == 1000


def test_chunk_with_none_results_returns_none() -> None:
    @memory_guarded(chunk="rows")
    def write(rows: list[int]) -> None:
        return None

    assert write(list(range(300))) is None


async def test_async_chunk() -> None:
    @memory_guarded(chunk="xs", batch_size=16)
    async def square(xs: list[int]) -> list[int]:
        await asyncio.sleep(0)
        return [x * x for x in xs]

    assert await square(list(range(100))) == [x * x for x in range(100)]


def test_a_failing_chunk_carries_the_resume_position() -> None:
    seen: list[int] = []
    outage = [True]

    @memory_guarded(chunk="xs", batch_size=8)
    def write(xs: list[int]) -> None:
        if 40 in xs and outage[0]:
            raise OSError("store unavailable")
        seen.extend(xs)

    items = list(range(100))
    with pytest.raises(OSError) as info:
        write(items)
    cursor = info.value.zerorag_processed  # type: ignore[attr-defined]
    assert seen == items[:cursor] and cursor <= 40 < cursor + 8
    outage[0] = False
    write(items[cursor:])
    assert seen == items


def test_chunk_mismatched_lengths_and_missing_arguments() -> None:
    @memory_guarded(chunk=("a", "b"))
    def pair(a: list[int], b: list[int]) -> list[int]:
        return a

    with pytest.raises(ValueError, match=r"same length.*a=3, b=2"):
        pair([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="does not take"):
        memory_guarded(chunk="texts")(lambda docs: docs)
    with pytest.raises(ValueError, match="generator"):

        @memory_guarded(chunk="xs")
        def gen(xs: list[int]):  # type: ignore[no-untyped-def]
            yield from xs


def test_wrong_budget_arguments_fail_at_decoration() -> None:
    with pytest.raises(ValueError, match="on_exceed='nope'"):
        memory_guarded(on_exceed="nope")
    with pytest.raises(ValueError, match="limit_mb=-1"):
        memory_guarded(limit_mb=-1)
    with pytest.raises(ValueError, match="min_batch_size=9 is above max_batch_size=3"):
        memory_guarded(min_batch_size=9, max_batch_size=3)
    with pytest.raises(TypeError, match="decorate a function"):
        memory_guarded(500)  # type: ignore[arg-type]


def test_raise_policy_stops_a_call_before_it_starts() -> None:
    reader = Steady(900)
    monitor = monitor_with(reader)
    ran = []

    @memory_guarded(limit_mb=500, on_exceed="raise", monitor=monitor)
    def work() -> None:
        ran.append(1)

    with pytest.raises(MemoryBudgetExceeded):
        work()
    assert ran == []
    reader.mb = 100
    work()
    assert ran == [1]
    assert (
        monitor.operations()[
            f"{__name__}.test_raise_policy_stops_a_call_before_it_starts.<locals>.work"
        ]["calls"]
        == 1
    )


def test_a_guarded_call_inside_a_budget_obeys_it() -> None:
    reader = Steady(450)
    monitor = monitor_with(reader)

    @memory_guarded(on_exceed="raise", monitor=monitor)
    def work() -> int:
        return 1

    assert work() == 1  # default ceiling 1000 MB
    with memory_budget(400, on_exceed="warn", monitor=monitor), pytest.raises(MemoryBudgetExceeded):
        work()


def test_eight_threads_of_guarded_calls_keep_counts_exact() -> None:
    @memory_guarded(name="threaded")
    def work(i: int) -> int:
        return i

    errors: list[BaseException] = []

    def run() -> None:
        try:
            for i in range(2000):
                assert work(i) == i
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert get_monitor().operations()["threaded"]["calls"] == 16_000


async def test_500_concurrent_guarded_tasks_keep_counts_exact() -> None:
    @memory_guarded(name="async-op", chunk="xs", batch_size=4)
    async def op(xs: list[int]) -> list[int]:
        await asyncio.sleep(0)
        return xs

    async def task(k: int) -> list[int]:
        async with memory_budget(100_000) as budget:
            out = await op(list(range(k % 20)))
            assert budget.limit_mb > 0
            return out

    results = await asyncio.gather(*(task(k) for k in range(500)))
    assert all(r == list(range(k % 20)) for k, r in enumerate(results))
    assert get_monitor().operations()["async-op"]["calls"] == 500
