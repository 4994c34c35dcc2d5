"""Fixtures of the system tests: the figures recorder, the soak length, a clean socket directory.

The ``--soak-seconds`` option is registered in ``tests/conftest.py``: pytest reads options only
from the conftest files it loads at start-up, and this directory's is not one of them when
pytest runs from the repository root.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from system_figures import JSON_ENV, Figures

_FIGURES = Figures()
_OUTCOMES: dict[str, str] = {}
#: Default soak length in seconds when the option is not registered (a run of this directory
#: without the repository's conftest).
DEFAULT_SOAK_SECONDS = 60.0


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The session's figures recorder (written out at the end of the session)."""
    return _FIGURES


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    """How long the soak runs: ``--soak-seconds`` (default 60)."""
    try:
        value = request.config.getoption("--soak-seconds")
    except ValueError:  # the option is not registered
        return DEFAULT_SOAK_SECONDS
    return float(value)


@pytest.fixture
def socket_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``XDG_RUNTIME_DIR`` for this test, so its control sockets (and any ``--pid``
    a fuzzed command line names) never meet another process's socket."""
    home = tmp_path / "run"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))
    return home


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if Path(str(item.fspath)).parent != Path(__file__).parent:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _OUTCOMES[item.name] = report.outcome
        _FIGURES.record("durations", **{item.name: round(report.duration, 1)})


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES.sections:
        return
    terminalreporter.section("zerorag_guard reliability figures")
    for line in _FIGURES.lines():
        terminalreporter.write_line(line)
    path = os.environ.get(JSON_ENV)
    if path:
        _FIGURES.write(path, _OUTCOMES)
        terminalreporter.write_line(f"figures written to {path}")
