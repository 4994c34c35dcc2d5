"""zerorag_guard keeps long-running batch and RAG-ingestion jobs inside a memory budget.

The public names are re-exported here and loaded when first used (``import zerorag_guard``
loads none of them): a module that only decorates its batch function pays for the budget and
the monitor, not for the leak profiler or the control socket. The modules behind the names are
one concern each (``probes``, ``limits``, ``monitor``, ``cleanup``, ``health``, ``budget``,
``guarded``, ``leaks``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import hooks as _hooks

if TYPE_CHECKING:
    from .budget import MemoryBudget
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
    from .guarded import memory_budget, memory_guarded
    from .leaks import LeakProfiler, LeakReport
    from .monitor import MemoryMonitor, configure, get_monitor

#: Each public name and the module it lives in.
_HOMES = {
    "Alert": "events",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "GuardConfig": "config",
    "LeakProfiler": "leaks",
    "LeakReport": "leaks",
    "Level": "events",
    "MemoryBudget": "budget",
    "MemoryBudgetExceeded": "errors",
    "MemoryMonitor": "monitor",
    "Sample": "events",
    "WorkerCrashed": "errors",
    "WorkerOutOfMemory": "errors",
    "WorkerTimeout": "errors",
    "configure": "monitor",
    "get_monitor": "monitor",
    "memory_budget": "guarded",
    "memory_guarded": "guarded",
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
    from . import control

    control._on_start(monitor)


_hooks.add_start_hook(_open_control_socket)
