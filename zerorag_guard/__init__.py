"""zerorag_guard keeps long-running batch and RAG-ingestion jobs inside a memory budget.

The public names are re-exported here and loaded when first used (``import zerorag_guard``
loads none of them): a module that only decorates its batch function pays for the budget and
the monitor, not for the leak profiler or the control socket. The modules behind the names are
one concern each, in one folder per part (``memory``, ``monitor``, ``budget``, ``leaks``,
``control``, ``pytest``, ``rag``, ``integrations``, ``cli``; see the architecture page).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .monitor import hooks as _hooks

if TYPE_CHECKING:
    from .budget.budget import MemoryBudget
    from .budget.guarded import memory_budget, memory_guarded
    from .config import GuardConfig, recommend_config
    from .errors import (
        CheckpointError,
        ConfigError,
        MemoryBudgetExceeded,
        WorkerCrashed,
        WorkerOutOfMemory,
        WorkerTimeout,
    )
    from .events import Alert, Level, Sample
    from .leaks.profiler import LeakProfiler, LeakReport
    from .monitor.monitor import MemoryMonitor
    from .monitor.process import configure, get_monitor

#: Each public name and the module it lives in.
_HOMES = {
    "Alert": "events",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "GuardConfig": "config",
    "LeakProfiler": "leaks.profiler",
    "LeakReport": "leaks.profiler",
    "Level": "events",
    "MemoryBudget": "budget.budget",
    "MemoryBudgetExceeded": "errors",
    "MemoryMonitor": "monitor.monitor",
    "Sample": "events",
    "WorkerCrashed": "errors",
    "WorkerOutOfMemory": "errors",
    "WorkerTimeout": "errors",
    "configure": "monitor.process",
    "get_monitor": "monitor.process",
    "memory_budget": "budget.guarded",
    "memory_guarded": "budget.guarded",
    "recommend_config": "config",
}
__all__ = [
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
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


def _open_control_socket(monitor: Any) -> None:
    """Load the control socket's module at a monitor's first start, and open the socket."""
    from .control import server as control

    control._on_start(monitor)


_hooks.add_start_hook(_open_control_socket)
