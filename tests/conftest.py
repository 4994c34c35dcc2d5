"""Shared fixtures: every test starts with a fresh process-wide monitor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from zerorag_guard.monitor import process as process_module


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, not in tests/system/conftest.py: pytest reads options only from start-up conftests.
    parser.addoption(
        "--soak-seconds",
        type=float,
        default=60.0,
        help="how long the system soak test runs, in seconds (default 60; make reliability: 120)",
    )


@pytest.fixture(autouse=True)
def _fresh_global_monitor(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The monitor reads the environment and .env: keep the developer's own settings out.
    for key in (
        "MEMORY_THRESHOLD_MB",
        "MEMORY_CRITICAL_THRESHOLD_MB",
        "GC_INTERVAL_SECONDS",
        "BATCH_SIZE",
    ):
        monkeypatch.delenv(key, raising=False)
    process_module._reset_global_for_tests()
    yield
    process_module._reset_global_for_tests()


@pytest.fixture
def no_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk sizes from memory alone: batches' times (the sizer's pace, which a loaded machine
    makes vary) cap nothing. For tests that assert exact sizes from real writes."""
    from zerorag_guard.budget import pace

    monkeypatch.setattr(pace, "PACE_SLACK", float("inf"))
