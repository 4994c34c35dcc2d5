"""The package's face: what ``import zerorag_guard`` costs, counted in modules (not timed).

A library that every batch function imports should load little: the public names come when
first used, and what only some users need (the control socket, the leak profiler, psutil's
fallback path) loads when it is first used. Each check runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import zerorag_guard

#: The public names of ``../shared/ARCHITECTURE.md``.
PUBLIC = [
    "Alert",
    "CheckpointError",
    "ConfigError",
    "GuardConfig",
    "LeakProfiler",
    "LeakReport",
    "Level",
    "MemoryBudget",
    "MemoryBudgetExceeded",
    "MemoryMonitor",
    "Sample",
    "WorkerCrashed",
    "WorkerOutOfMemory",
    "WorkerTimeout",
    "configure",
    "get_monitor",
    "memory_budget",
    "memory_guarded",
    "recommend_config",
]
#: Loaded only where used: never by the import of the package or of the budget's front.
ON_DEMAND = ["zerorag_guard.control.server", "zerorag_guard.leaks.profiler", "psutil"]


def loaded_by(statement: str) -> list[str]:
    """The modules a fresh interpreter loads for ``statement``."""
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_every_public_name_imports_from_the_package() -> None:
    assert sorted(zerorag_guard.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(zerorag_guard, name).__name__ == name
    assert set(PUBLIC) <= set(dir(zerorag_guard))
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        zerorag_guard.nothing_here  # noqa: B018


def test_importing_the_package_loads_none_of_its_parts() -> None:
    # Measured: 20 modules (the package, the monitor's folder and its hooks, logging and
    # threading).
    loaded = loaded_by("import zerorag_guard")
    assert len(loaded) <= 40, loaded
    hooks = {"zerorag_guard.monitor", "zerorag_guard.monitor.hooks"}
    assert not [m for m in loaded if m.startswith("zerorag_guard.") and m not in hooks]


@pytest.mark.parametrize(
    "statement",
    [
        "from zerorag_guard import memory_guarded, memory_budget",
        "from zerorag_guard import memory_budget; memory_budget(limit_mb=4000)",
    ],
)
def test_the_budgets_front_loads_no_socket_no_leak_profiler_no_psutil(statement: str) -> None:
    # Measured: 182 modules, most of them wrapt's (it loads asyncio and importlib.metadata).
    loaded = loaded_by(statement)
    assert len(loaded) <= 240, len(loaded)
    assert not set(ON_DEMAND) & set(loaded)


def test_the_control_socket_opens_when_the_monitor_first_starts() -> None:
    # Loaded at the monitor's first start, not at import: --pid still reaches every job.
    loaded = loaded_by(
        "import os, sys, zerorag_guard\n"
        "from zerorag_guard.control.client import socket_path\n"
        "os.environ['ZERORAG_GUARD_CONTROL_SOCKET'] = '1'\n"
        "assert 'zerorag_guard.control.server' not in sys.modules\n"
        "zerorag_guard.get_monitor()\n"
        "assert os.path.exists(socket_path(os.getpid()))\n"
    )
    assert "zerorag_guard.control.server" in loaded
