"""zerorag_guard keeps long-running batch and RAG-ingestion jobs inside a memory budget.

The public names are re-exported here; the modules behind them are one concern each
(``probes``, ``limits``, ``monitor``, ``cleanup``, ``health``, ``budget``, ``guarded``, ``leaks``).
"""

# control registers the monitor start hook that opens the control socket (--pid).
from . import control  # noqa: F401
from .budget import MemoryBudget, memory_budget
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
from .guarded import memory_guarded
from .leaks import LeakProfiler, LeakReport
from .monitor import MemoryMonitor, configure, get_monitor

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
