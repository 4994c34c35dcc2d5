"""Reaching a guarded process through its control socket: where sockets live, and the client.

Every guarded process of a user listens on ``<dir>/<pid>.sock``, where ``<dir>`` is
``$XDG_RUNTIME_DIR/zerorag-guard`` when ``XDG_RUNTIME_DIR`` is a directory of this user, else
``<tmp>/zerorag-guard-<uid>``. The directory is the first line of defence (mode 0700, owned by the
user; a directory someone else owns is refused, since in ``/tmp`` another user could have made it
first); the server then checks the peer's uid with ``SO_PEERCRED``.

The protocol is one JSON object per line each way: ``{"cmd": "ping"}`` →
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from ..config import GuardConfig
from ..rundir import ControlError, check_private_dir, socket_dir

#: Linux's sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: Replies can be larger than requests (``debug``, ``history``), but not unboundedly so.
MAX_REPLY = 64 * 1024 * 1024
SUFFIX = ".sock"


class NoSuchProcess(ControlError):
    """No guarded process answers for that pid: no socket, or nobody listening on it."""

    def __init__(self, pid: int, path: Path, reason: str) -> None:
        self.pid = pid
        self.path = path
        super().__init__(f"no guarded process with pid {pid} ({reason}: {path})")


class RemoteError(ControlError):
    """The guarded process answered ``{"ok": false}``; ``error_type`` is e.g. ``ConfigError``."""

    def __init__(self, message: str, error_type: str = "") -> None:
        self.error_type = error_type
        super().__init__(message)


def socket_path(pid: int, directory: Optional[Path] = None) -> Path:
    """Where the process ``pid`` listens."""
    path = (directory or socket_dir()) / f"{pid}{SUFFIX}"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlError(
            f"control socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
            "set XDG_RUNTIME_DIR or TMPDIR to a shorter directory"
        )
    return path


def setting_name(key: str) -> str:
    """The :class:`GuardConfig` field for ``key``: a field name (``threshold_mb``) or its
    environment variable (``MEMORY_THRESHOLD_MB``), any case. Unknown keys raise ``KeyError``."""
    fields = dataclasses.fields(GuardConfig)
    wanted = key.strip().lower()
    for f in fields:
        if wanted in (f.name, str(f.metadata["env"]).lower()):
            return f.name
    known = ", ".join(str(f.metadata["env"]) for f in fields)
    raise KeyError(f"unknown setting {key!r}; known: {known} (or their field names)")


class ControlClient:
    """Sends requests to the guarded process ``pid``; one connection per request."""

    def __init__(self, pid: int, directory: Optional[Path] = None, timeout: float = 10.0) -> None:
        self.pid = pid
        self.directory = directory or socket_dir()
        self.timeout = timeout

    @property
    def path(self) -> Path:
        return socket_path(self.pid, self.directory)

    def request(
        self, cmd: str, *, timeout: Optional[float] = None, **fields: Any
    ) -> dict[str, Any]:
        """Send ``{"cmd": cmd, **fields}`` and return the reply; ``{"ok": false}`` raises
        :class:`RemoteError`, a missing or dead socket :class:`NoSuchProcess`."""
        path = self.path
        if not path.exists():
            raise NoSuchProcess(self.pid, path, "no control socket")
        check_private_dir(path.parent)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout if timeout is None else timeout)
            try:
                sock.connect(os.fspath(path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise NoSuchProcess(self.pid, path, "nobody listening on the socket") from None
            try:
                sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered and closed before our request was read (a refusal): read it
            reply = json.loads(read_line(sock, MAX_REPLY))
        if not isinstance(reply, dict):
            raise RemoteError(f"pid {self.pid} sent a reply that is not a JSON object")
        if not reply.get("ok"):
            raise RemoteError(
                str(reply.get("error", "request failed")), str(reply.get("error_type", ""))
            )
        return reply


def read_line(sock: socket.socket, limit: int) -> bytes:
    """One newline-terminated line from ``sock`` (the socket's timeout applies to each read)."""
    buf = bytearray()
    while b"\n" not in buf:
        if len(buf) > limit:
            raise ControlError(f"reply longer than {limit} bytes")
        chunk = sock.recv(1 << 16)
        if not chunk:
            if buf:
                break
            raise ControlError("the guarded process closed the connection without a reply")
        buf += chunk
    return bytes(buf.split(b"\n", 1)[0])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _socket_pid(path: Path) -> Optional[int]:
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else ""
    return int(stem) if stem.isdigit() else None


def remove_stale(directory: Path) -> int:
    """Remove the sockets of dead processes in ``directory`` (a process that ended with
    ``os._exit``, e.g. a forked worker, or was killed, could not remove its own); returns how
    many were removed."""
    removed = 0
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    for path in entries:
        pid = _socket_pid(path)
        if pid is not None and not _pid_alive(pid):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def list_processes(
    directory: Optional[Path] = None, timeout: float = 2.0, clean: bool = True
) -> list[dict[str, Any]]:
    """This user's guarded processes, each a dict with ``pid``, ``socket`` and either ``ping``
    (its reply) or ``error``. With ``clean``, sockets left behind by dead processes are removed."""
    directory = directory or socket_dir()
    try:
        check_private_dir(directory)
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return []
    found = []
    for path in entries:
        pid = _socket_pid(path)
        if pid is None:
            continue
        if not _pid_alive(pid):
            if clean:
                path.unlink(missing_ok=True)
            continue
        entry: dict[str, Any] = {"pid": pid, "socket": str(path)}
        try:
            entry["ping"] = ControlClient(pid, directory, timeout).request("ping")
        except NoSuchProcess:
            # A live pid with nobody listening: the pid was reused, or the process exec'd. Leave
            # a socket younger than a few seconds alone: its server may be between bind and listen.
            try:
                if clean and time.time() - path.stat().st_mtime > 5.0:
                    path.unlink()
            except OSError:
                pass
            continue
        except (OSError, ValueError, ControlError) as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        found.append(entry)
    return found
