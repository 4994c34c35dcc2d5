"""Benchmarks start, like the tests, from a fresh process-wide monitor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from zerorag_guard.monitor import process as process_module


@pytest.fixture(autouse=True)
def _fresh_global_monitor() -> Iterator[None]:
    process_module._reset_global_for_tests()
    yield
    process_module._reset_global_for_tests()
