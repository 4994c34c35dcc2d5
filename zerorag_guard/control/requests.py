"""The control socket's requests, answered from a monitor: ``ping``, ``health``, ``history``,
``cleanup``, ``configure``, ``debug``.

Transport-free, so the CLI answers its own process's questions with the very same code
(``zerorag-guard report`` and ``report --pid`` cannot drift apart).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable

from ..errors import ConfigError
from ..memory.probes import MB
from ..monitor.monitor import MemoryMonitor
from .client import setting_name

logger = logging.getLogger("zerorag_guard")

#: The longest tracemalloc window a ``debug`` request may ask for.
MAX_TRACE_SECONDS = 10.0

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def error_reply(message: str, error_type: str = "") -> dict[str, Any]:
    """``{"ok": false, "error": message}``, with ``error_type`` when given."""
    reply: dict[str, Any] = {"ok": False, "error": message}
    if error_type:
        reply["error_type"] = error_type
    return reply


class Requests:
    """Answers requests about ``monitor``; counts what it served and what it refused."""

    def __init__(self, monitor: MemoryMonitor) -> None:
        self.monitor = monitor
        self.pid = os.getpid()
        self.errors = 0
        self.served = 0
        self._handlers: dict[str, Handler] = {
            "ping": self._ping,
            "health": self._health,
            "history": self._history,
            "cleanup": self._cleanup,
            "configure": self._configure,
            "debug": self._debug,
        }

    def handle_line(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line; never raises."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as exc:
            self.errors += 1
            return error_reply(
                f"request is not valid JSON ({type(exc).__name__}: {exc}); "
                'send one object per line, e.g. {"cmd": "ping"}'
            )
        return self.handle(request)

    def handle(self, request: Any) -> dict[str, Any]:
        """The reply to one decoded request; never raises."""
        if not isinstance(request, dict):
            self.errors += 1
            return error_reply(
                f'a request is a JSON object with a "cmd" key, got {type(request).__name__}'
            )
        cmd = request.get("cmd")
        handler = self._handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            self.errors += 1
            return error_reply(f"unknown command {cmd!r}; known: {', '.join(self._handlers)}")
        try:
            reply = handler(request)
        except ConfigError as exc:
            self.errors += 1
            return error_reply(str(exc), "ConfigError")
        except (ValueError, TypeError, KeyError) as exc:
            self.errors += 1
            return error_reply(
                str(exc.args[0]) if isinstance(exc, KeyError) else str(exc), type(exc).__name__
            )
        except Exception as exc:
            self.errors += 1
            logger.exception("control request %r failed", cmd)
            return error_reply(f"{cmd} failed: {type(exc).__name__}: {exc}", type(exc).__name__)
        self.served += 1
        return {"ok": True, "pid": self.pid, **reply}

    def _ping(self, request: dict[str, Any]) -> dict[str, Any]:
        from .. import __version__

        return {
            "argv": list(sys.argv),
            "cmdline": _cmdline(),
            "rss_mb": round(self.monitor.rss_mb(), 1),
            "level": self.monitor.level.name,
            "reserved_mb": round(
                sum(r["bytes"] for r in self.monitor.group.reservations() if r["pid"] == self.pid)
                / MB,
                1,
            ),
            "version": __version__,
        }

    def _health(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "health": self.monitor.get_health_status(),
            "limit": self.monitor.effective_limit(refresh=True).to_dict(),
        }

    def _history(self, request: dict[str, Any]) -> dict[str, Any]:
        since = float(request.get("since", float("-inf")))
        self.monitor.sample()  # at least one fresh point per request
        samples = [
            [s.time, round(s.rss_mb, 3), s.level.name]
            for s in self.monitor.history
            if s.time > since
        ]
        return {
            "now": time.monotonic(),
            "samples": samples,
            "alerts": [a.to_dict() for a in self.monitor.alerts],
            "config": self.monitor.config.to_dict(),
            "thresholds": self.monitor.thresholds.to_dict(),
            "limit": self.monitor.effective_limit().to_dict(),
        }

    def _cleanup(self, request: dict[str, Any]) -> dict[str, Any]:
        strategy = request.get("strategy", "standard")
        if not isinstance(strategy, str):
            raise ValueError(f"strategy must be a string, got {strategy!r}")
        result = self.monitor.cleanup(strategy, wait=True)
        return {"result": result.to_dict() if result is not None else None}

    def _configure(self, request: dict[str, Any]) -> dict[str, Any]:
        changes = request.get("changes")
        if not isinstance(changes, dict) or not changes:
            raise ValueError('configure needs "changes": {"SETTING": value, ...}')
        config = self.monitor.configure(**{setting_name(str(k)): v for k, v in changes.items()})
        return {"config": config.to_dict()}

    def _debug(self, request: dict[str, Any]) -> dict[str, Any]:
        from .diagnostics import collect

        seconds = min(MAX_TRACE_SECONDS, max(0.0, float(request.get("trace_seconds", 1.0))))
        return {
            "debug": collect(self.monitor, trace_seconds=seconds, top=int(request.get("top", 15)))
        }


def _cmdline() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return " ".join(sys.argv)
