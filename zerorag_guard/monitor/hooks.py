"""What runs when a monitor starts or stops, registered by the parts above the core.

The control socket lives above the monitor: it takes part through these hooks, so the core
never imports it. The package registers a hook that loads the control socket's module when a
monitor first starts, so ``import zerorag_guard`` does not load it (nor its ``socket``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .monitor import MemoryMonitor

Hook = Callable[["MemoryMonitor"], None]

logger = logging.getLogger("zerorag_guard")

#: Called with the monitor at the end of every ``start()`` / ``stop()``.
_start_hooks: list[Hook] = []
_stop_hooks: list[Hook] = []


def add_start_hook(fn: Hook) -> None:
    """Call ``fn(monitor)`` whenever a monitor starts (also after ``os.fork`` in the child)."""
    if fn not in _start_hooks:
        _start_hooks.append(fn)


def add_stop_hook(fn: Hook) -> None:
    """Call ``fn(monitor)`` whenever a monitor stops (``stop()``, ``reset()``)."""
    if fn not in _stop_hooks:
        _stop_hooks.append(fn)


def run_start_hooks(monitor: MemoryMonitor) -> None:
    _run(_start_hooks, monitor)


def run_stop_hooks(monitor: MemoryMonitor) -> None:
    _run(_stop_hooks, monitor)


def _run(hooks: list[Hook], monitor: MemoryMonitor) -> None:
    for hook in list(hooks):
        try:
            hook(monitor)
        except Exception:
            logger.exception("monitor hook %r failed; the monitor goes on", hook)
