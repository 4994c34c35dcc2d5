"""Functions for the isolation tests: found by module and name in a worker process."""

from __future__ import annotations

import os
import time

from zerorag_guard import memory_guarded

MB = 1024 * 1024


def touch(mb: float) -> int:
    """Hold ``mb`` MB of touched memory for a moment; returns the bytes held."""
    block = bytearray(int(mb * MB))
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


@memory_guarded(isolate=True, limit_mb=150)
def need(mb: float) -> int:
    return touch(mb)


@memory_guarded(isolate="rlimit", limit_mb=400)
def need_rlimit(mb: float) -> int:
    return touch(mb)


@memory_guarded(isolate=True, limit_mb=150)
def item(i: int, mb: float, log: str) -> int:
    """One item: needs ``mb`` MB for a moment, then is logged as done."""
    touch(mb)
    _record(log, [i])
    return i * 2


@memory_guarded(isolate="rlimit", limit_mb=400)
def item_rlimit(i: int, mb: float, log: str) -> int:
    touch(mb)
    _record(log, [i])
    return i * 2


def _record(log: str, items: list[int]) -> None:
    with open(log, "a") as f:
        f.write("".join(f"{i}\n" for i in items))


def _each(items: list[int], sizes: list[float], log: str) -> list[int]:
    for size in sizes:
        if size:
            touch(size)
    _record(log, items)
    return [i * 2 for i in items]


@memory_guarded(isolate=True, limit_mb=150, chunk=("items", "sizes"))
def process(items: list[int], sizes: list[float], log: str) -> list[int]:
    """Each item needs ``sizes[i]`` MB for a moment; the processed ones are logged."""
    return _each(items, sizes, log)


@memory_guarded(isolate="rlimit", limit_mb=400, chunk=("items", "sizes"))
def process_rlimit(items: list[int], sizes: list[float], log: str) -> list[int]:
    return _each(items, sizes, log)


@memory_guarded(isolate=True, limit_mb=200)
def fails(text: str) -> None:
    raise KeyError(text)


class Unpicklable(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)
        self.lock = __import__("threading").Lock()


@memory_guarded(isolate=True, limit_mb=200)
def fails_oddly() -> None:
    raise Unpicklable("x", "y")


@memory_guarded(isolate=True, limit_mb=200, timeout=0.5)
def sleeps(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


@memory_guarded(isolate=True, limit_mb=200)
def dies(sig: int) -> None:
    os.kill(os.getpid(), sig)


@memory_guarded(isolate=True, limit_mb=200)
def pid() -> int:
    return os.getpid()


@memory_guarded(isolate=True, limit_mb=200)
async def apid() -> int:
    return os.getpid()


@memory_guarded(isolate=True, limit_mb=200)
def echo(value: object) -> object:
    return value


def bare_echo(value: object) -> object:
    return value


@memory_guarded(isolate=True, limit_mb=200)
def pid_or_raise(fail: bool) -> int:
    """The worker's pid, or FileNotFoundError (an OSError: the call's own, not the pipe's)."""
    if fail:
        raise FileNotFoundError(2, "no such file", "/nowhere")
    return os.getpid()
