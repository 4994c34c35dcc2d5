"""The functions the isolation benchmark calls: found by module and name in a worker."""

from __future__ import annotations

from zerorag_guard import memory_guarded


def bare_echo(value: object) -> object:
    return value


@memory_guarded(isolate=True, limit_mb=200)
def echo(value: object) -> object:
    return value
