"""zerorag_guard keeps long-running batch and RAG-ingestion jobs inside a memory budget.

The public names are re-exported here; the modules behind them are one concern each
(``probes``, ``limits``, ``monitor``, ``cleanup``, ``health``, ``budget``, ``guarded``, ``leaks``).
"""

from .config import GuardConfig, recommend_config
from .errors import ConfigError, MemoryBudgetExceeded
from .events import Alert, Level, Sample
from .monitor import MemoryMonitor, configure, get_monitor

__all__ = [
    "Alert",
    "ConfigError",
    "GuardConfig",
    "Level",
    "MemoryBudgetExceeded",
    "MemoryMonitor",
    "Sample",
    "configure",
    "get_monitor",
    "recommend_config",
]
__version__ = "0.1.0"
