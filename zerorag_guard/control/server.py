"""The control socket: how ``zerorag-guard --pid PID`` reaches a running guarded process.

When the process-wide monitor starts (:func:`zerorag_guard.get_monitor`), this module opens a
Unix domain socket ``<pid>.sock`` in the per-user directory of
:func:`~zerorag_guard.rundir.socket_dir` (mode 0700, socket 0600) and serves JSON-line
requests on it: ``ping``, ``health``, ``history``, ``cleanup``, ``configure``, ``debug``. The
setting ``control_socket`` (``ZERORAG_GUARD_CONTROL_SOCKET=0``) turns it off.

Safety: the peer's uid is checked with ``SO_PEERCRED`` and another user is refused; a request
line is capped at 1 MiB and must arrive within ``read_timeout`` (a half-open connection cannot
hold a thread for long); connections are served by at most ``max_connections`` threads; a
malformed request gets an error reply and the server goes on. The socket file is removed when
the monitor stops and at exit; after ``os.fork`` the child opens a socket of its own.

This module sits above the monitor: it takes part through :mod:`zerorag_guard.monitor.hooks`, so the
core never imports it, and the package loads it only when a monitor first starts.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ..monitor import hooks
from ..monitor import process as process_module
from ..monitor.monitor import MemoryMonitor
from .client import check_private_dir, remove_stale, socket_dir, socket_path
from .requests import Requests, error_reply

logger = logging.getLogger("zerorag_guard")

#: A request line longer than this is refused (and the connection closed).
MAX_LINE = 1024 * 1024
#: Seconds a client has to send a complete request line.
READ_TIMEOUT = 5.0
#: Connections served at once; more are answered "busy" and closed.
MAX_CONNECTIONS = 16


def peer_uid(conn: socket.socket) -> Optional[int]:
    """The uid of the process at the other end, from ``SO_PEERCRED`` (None where unsupported)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # pragma: no cover - not Linux: the 0700 directory is the only guard
        return None
    raw = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, default=str).encode() + b"\n"


class ControlServer:
    """Serves one monitor on a Unix socket at ``path``; :meth:`start` binds, :meth:`close` ends."""

    def __init__(
        self,
        monitor: MemoryMonitor,
        path: Path,
        *,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_line: int = MAX_LINE,
    ) -> None:
        self.monitor = monitor
        self.path = Path(path)
        self.read_timeout = read_timeout
        self.max_line = max_line
        self.pid = os.getpid()
        self.uid = os.getuid()
        self.refused = 0
        self.transport_errors = 0
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._closed = threading.Event()
        self.requests = Requests(monitor)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> ControlServer:
        """Bind the socket (mode 0600 in a 0700 directory) and start accepting."""
        check_private_dir(self.path.parent, create=True)
        remove_stale(self.path.parent)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A file at our own pid's name can only be a leftover of a dead process.
            self.path.unlink(missing_ok=True)
            sock.bind(os.fspath(self.path))
            os.chmod(self.path, 0o600)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(
            target=self._accept_loop, name="zerorag-guard-control", daemon=True
        )
        self._thread.start()
        logger.debug("control socket listening on %s", self.path)
        return self

    def close(self, unlink: bool = True) -> None:
        """Stop serving; remove the socket file unless ``unlink`` is false (a forked child must
        not remove its parent's socket). Safe to call twice."""
        self._closed.set()
        # shutdown() acts on the socket shared with a forked parent, close() only on our fd:
        # a child dropping what it inherited must only close.
        own = self.pid == os.getpid()
        sock, self._sock = self._sock, None
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for s in [sock, *conns] if sock is not None else conns:
            if own:
                try:
                    s.shutdown(socket.SHUT_RDWR)  # wakes accept() and recv() at once on Linux
                except OSError:
                    pass
        if sock is not None:
            sock.close()
        if not own:
            for conn in conns:
                conn.close()
        thread = self._thread
        if own and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._thread = None
        if unlink and own:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                logger.debug("could not remove %s", self.path, exc_info=True)

    @property
    def serving(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed.is_set()

    # -- connections -------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        sock = self._sock
        while sock is not None and not self._closed.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.05)  # e.g. EMFILE: back off rather than spin
                continue
            if not self._slots.acquire(blocking=False):
                self.refused += 1
                self._reply_and_close(conn, error_reply("busy: too many open control connections"))
                continue
            with self._conns_lock:
                self._conns.add(conn)
            try:
                threading.Thread(
                    target=self._serve, args=(conn,), daemon=True, name="zerorag-guard-control-conn"
                ).start()
            except RuntimeError:
                self._release(conn)

    def _reply_and_close(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        try:
            conn.settimeout(1.0)
            conn.sendall(_encode(reply))
        except OSError:
            pass
        finally:
            conn.close()

    def _discard_rest(self, conn: socket.socket) -> None:
        """Read and drop what the client is still sending (the rest of an over-long line), for
        at most a second and four times the line cap. Closing with unread bytes would reset the
        connection, and the client would lose the error reply it was sent."""
        conn.shutdown(socket.SHUT_WR)
        left = 4 * self.max_line
        deadline = time.monotonic() + 1.0
        while left > 0 and (remaining := deadline - time.monotonic()) > 0:
            conn.settimeout(remaining)
            chunk = conn.recv(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)

    def _release(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)
        # The slot first: a client that has seen its connection end can connect again at once.
        self._slots.release()
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            uid = peer_uid(conn)
            if uid is not None and uid != self.uid:
                self.refused += 1
                logger.warning("control socket: refused a connection from uid %s", uid)
                conn.settimeout(1.0)
                message = (
                    f"permission denied: uid {uid} may not control a process of uid {self.uid}"
                )
                conn.sendall(_encode(error_reply(message, "PermissionError")))
                return
            buf = bytearray()
            while not self._closed.is_set():
                line, buf, problem = self._read_line(conn, buf)
                if problem:
                    self.transport_errors += 1
                    conn.settimeout(1.0)
                    conn.sendall(_encode(error_reply(problem)))
                    if len(buf) > self.max_line:  # the client may still be sending the line
                        self._discard_rest(conn)
                    return
                if line is None:
                    return
                reply = self.handle_line(line)
                conn.settimeout(self.read_timeout)
                conn.sendall(_encode(reply))
        except OSError:
            pass  # the client went away; nothing to tell it
        finally:
            self._release(conn)

    def _read_line(
        self, conn: socket.socket, buf: bytearray
    ) -> tuple[Optional[bytes], bytearray, str]:
        """(line, rest, problem): line is None at a clean end of the connection."""
        deadline = time.monotonic() + self.read_timeout
        while b"\n" not in buf:
            if len(buf) > self.max_line:
                return None, buf, f"request line longer than {self.max_line} bytes; closing"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return (
                    None,
                    buf,
                    (f"no complete request line within {self.read_timeout:g} s; closing"),
                )
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                # The client shut down its side: serve a last line sent without a newline.
                return (bytes(buf), bytearray(), "") if buf.strip() else (None, buf, "")
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        if len(line) > self.max_line:
            return None, buf, f"request line longer than {self.max_line} bytes; closing"
        return line, bytearray(rest), ""

    # -- requests ----------------------------------------------------------------------------------

    def handle_line(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line; never raises."""
        return self.requests.handle_line(line)

    @property
    def errors(self) -> int:
        """Malformed or failed requests so far (transport problems included)."""
        return self.transport_errors + self.requests.errors


# -- the process-wide server, opened by the process-wide monitor ----------------------------------
_server: Optional[ControlServer] = None
_enabled = True
_lock = threading.Lock()
_lock_pid = os.getpid()


def _module_lock() -> threading.Lock:
    # A lock held by another thread at fork time would stay held forever in the child.
    global _lock, _lock_pid
    if _lock_pid != os.getpid():
        _lock, _lock_pid = threading.Lock(), os.getpid()
    return _lock


def set_enabled(enabled: bool) -> None:
    """Allow or forbid this process's control socket (the CLI forbids its own), closing it now
    when forbidden."""
    global _enabled
    _enabled = enabled
    if not enabled:
        close_server()


def current_server() -> Optional[ControlServer]:
    """The process-wide server, if one is open in this process."""
    server = _server
    return server if server is not None and server.pid == os.getpid() else None


def _drop_inherited() -> None:
    """Forget a server inherited through fork: close its fds, leave the parent's file alone."""
    global _server
    if _server is not None and _server.pid != os.getpid():
        _server.close(unlink=False)
        _server = None


def _on_start(monitor: MemoryMonitor) -> None:
    global _server
    if monitor is not process_module._global or not _enabled or not monitor.config.control_socket:
        return
    with _module_lock():
        _drop_inherited()
        if _server is not None and _server.monitor is monitor and _server.serving:
            return
        if _server is not None:
            _server.close()
        _server = None
        try:
            _server = ControlServer(monitor, socket_path(os.getpid())).start()
        except (OSError, ValueError) as exc:
            logger.warning("control socket not opened: %s", exc)


def _on_stop(monitor: MemoryMonitor) -> None:
    with _module_lock():
        if _server is not None and _server.monitor is monitor:
            close_server(locked=True)


def close_server(locked: bool = False) -> None:
    """Close the process-wide server and remove its socket file."""
    global _server
    if not locked:
        with _module_lock():
            close_server(locked=True)
        return
    _drop_inherited()
    if _server is not None:
        _server.close()
        _server = None


def _after_fork_in_child() -> None:
    _module_lock()
    _drop_inherited()
    monitor = process_module._global
    if monitor is not None and monitor.running:
        _on_start(monitor)


def _at_exit() -> None:
    server = current_server()
    if server is not None:
        server.close()


# The package registers the start hook (it loads this module at a monitor's first start).
hooks.add_stop_hook(_on_stop)
atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = [
    "MAX_LINE",
    "ControlServer",
    "close_server",
    "current_server",
    "peer_uid",
    "set_enabled",
    "socket_dir",
]
