"""Where a command's figures come from: this process, or a guarded process through its socket.

Both answer the same requests with the same replies: the local target runs the control socket's
own request handlers in process, so ``report`` and ``report --pid`` cannot drift apart.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ..control.client import ControlClient, RemoteError
from ..control.requests import Requests
from ..monitor.process import get_monitor


class Target:
    """``request(cmd, **fields)`` → the reply dict (``{"ok": false}`` raises ``RemoteError``)."""

    def __init__(self, pid: Optional[int] = None, timeout: float = 30.0) -> None:
        self.remote = pid is not None
        self.pid = pid if pid is not None else os.getpid()
        self._client = ControlClient(pid, timeout=timeout) if pid is not None else None
        self._local: Optional[Requests] = None

    def request(
        self, cmd: str, *, timeout: Optional[float] = None, **fields: Any
    ) -> dict[str, Any]:
        if self._client is not None:
            return self._client.request(cmd, timeout=timeout, **fields)
        if self._local is None:
            self._local = Requests(get_monitor())
        reply = self._local.handle({"cmd": cmd, **fields})
        if not reply.get("ok"):
            raise RemoteError(str(reply.get("error")), str(reply.get("error_type", "")))
        return reply

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = self.request("health")["health"]
        return health

    @property
    def label(self) -> str:
        return f"pid {self.pid}" if self.remote else f"pid {self.pid} (this process)"


def target_for(args: Any) -> Target:
    return Target(getattr(args, "pid", None))


def health_keys(health: dict[str, Any]) -> dict[str, Any]:
    """The health keys every ``--json`` output carries."""
    return {
        k: health[k]
        for k in ("health_score", "status", "memory_usage", "health_issues")
        if k in health
    }
