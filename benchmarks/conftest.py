"""Benchmarks start, like the tests, from a fresh process-wide monitor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from zerorag_guard import monitor as monitor_module


@pytest.fixture(autouse=True)
def _fresh_global_monitor() -> Iterator[None]:
    monitor_module._reset_global_for_tests()
    yield
    monitor_module._reset_global_for_tests()
