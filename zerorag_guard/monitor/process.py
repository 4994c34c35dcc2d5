"""The process's one monitor: created from the environment and started on first use.

:func:`get_monitor` builds it (a :class:`~zerorag_guard.monitor.monitor.MemoryMonitor` from the
environment and ``.env``) and starts its sampler; :func:`configure` changes its settings at run
time. Everything that acts for the process (budgets, guarded calls, the control socket, the
exporters) reads this one, so they see the same levels, alerts and cleanups.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

from ..config import GuardConfig
from .monitor import MemoryMonitor

_global: Optional[MemoryMonitor] = None
_global_lock = threading.Lock()


def get_monitor() -> MemoryMonitor:
    """The process-wide monitor, created from the environment and started on first use."""
    global _global
    monitor = _global
    if monitor is None:
        with _global_lock:
            if _global is None:
                # Published before start() so start hooks can tell the process-wide monitor.
                _global = MemoryMonitor()
                _global.start()
            monitor = _global
    return monitor


def process_monitor() -> Optional[MemoryMonitor]:
    """The process-wide monitor if it has been created, without creating it."""
    return _global


def configure(**changes: Any) -> GuardConfig:
    """Change the process-wide monitor's settings at run time (:meth:`MemoryMonitor.configure`)."""
    return get_monitor().configure(**changes)


def _reset_global_for_tests() -> None:
    """Stop and drop the process-wide monitor; the next :func:`get_monitor` builds a fresh one."""
    global _global
    with _global_lock:
        if _global is not None:
            _global.stop()
        _global = None


def _after_fork_in_child() -> None:
    global _global_lock
    _global_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
