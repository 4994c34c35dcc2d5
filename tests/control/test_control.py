"""The control socket: who opens it, its modes, who may talk to it, and how it survives abuse."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zerorag_guard.control import server as control
from zerorag_guard.control.client import (
    ControlClient,
    ControlError,
    NoSuchProcess,
    RemoteError,
    check_private_dir,
    list_processes,
    socket_dir,
)
from zerorag_guard.control.server import ControlServer
from zerorag_guard.memory.probes import MemoryProbe
from zerorag_guard.monitor import process as process_module
from zerorag_guard.monitor.monitor import MemoryMonitor
from zerorag_guard.monitor.process import get_monitor

NOBODY = 65534


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private, short XDG_RUNTIME_DIR: sockets go to <it>/zerorag-guard."""
    path = Path(tempfile.mkdtemp(prefix="zg-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    monkeypatch.delenv("ZERORAG_GUARD_CONTROL_SOCKET", raising=False)
    yield path
    process_module._reset_global_for_tests()
    leftovers = sorted(p.name for p in (path / "zerorag-guard").glob("*.sock"))
    shutil.rmtree(path, ignore_errors=True)
    assert leftovers == [], f"socket files left behind: {leftovers}"


def _talk(path: Path, payload: bytes, timeout: float = 5.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            s.sendall(payload)
        except BrokenPipeError:
            pass  # a refusal may come and the server close before the request is sent: read it
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf.split(b"\n")[0])
    return reply


def test_process_wide_monitor_opens_a_private_socket_and_removes_it(runtime_dir: Path) -> None:
    get_monitor()
    directory = runtime_dir / "zerorag-guard"
    path = directory / f"{os.getpid()}.sock"
    assert socket_dir() == directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reply = ControlClient(os.getpid()).request("ping")
    assert reply["pid"] == os.getpid() and reply["level"] == "NORMAL"
    process_module._reset_global_for_tests()
    assert not path.exists()
    assert control.current_server() is None
    with pytest.raises(NoSuchProcess):
        ControlClient(os.getpid()).request("ping")


def test_reset_reopens_and_requests_reach_the_monitor(runtime_dir: Path) -> None:
    monitor = get_monitor()
    monitor.reset()
    client = ControlClient(os.getpid())
    assert client.request(
        "configure", changes={"MEMORY_THRESHOLD_MB": "500 MB", "critical_threshold_mb": 600}
    )["ok"]
    assert monitor.config.threshold_mb == 500 and monitor.config.critical_threshold_mb == 600
    health = client.request("health")
    assert health["health"]["memory_usage"]["threshold_mb"] == 500
    assert health["limit"]["candidates"]
    with pytest.raises(RemoteError) as err:
        client.request("configure", changes={"MEMORY_THRESHOLD_MB": "lots"})
    assert err.value.error_type == "ConfigError" and "MEMORY_THRESHOLD_MB" in str(err.value)
    assert monitor.config.threshold_mb == 500  # a refused change changes nothing


def test_setting_off_opens_no_socket(runtime_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZERORAG_GUARD_CONTROL_SOCKET", "0")
    get_monitor()
    assert control.current_server() is None
    assert not (runtime_dir / "zerorag-guard" / f"{os.getpid()}.sock").exists()


def test_monitors_built_directly_open_no_socket(runtime_dir: Path) -> None:
    monitor = MemoryMonitor().start()
    try:
        assert control.current_server() is None
        assert not (runtime_dir / "zerorag-guard").exists()
    finally:
        monitor.stop()


def test_loose_directory_is_tightened_and_foreign_one_refused(runtime_dir: Path) -> None:
    loose = runtime_dir / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    check_private_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    if os.getuid() != 0:
        pytest.skip("making a directory owned by another user needs root")
    foreign = runtime_dir / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    with pytest.raises(ControlError, match="belongs to uid 65534"):
        check_private_dir(foreign)


def test_forked_child_serves_its_own_socket(runtime_dir: Path) -> None:
    get_monitor()
    parent = os.getpid()
    directory = runtime_dir / "zerorag-guard"
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_end)
            mine = ControlClient(os.getpid(), timeout=5).request("ping")["pid"]
            theirs = ControlClient(parent, timeout=5).request("ping")["pid"]
            os.write(write_end, json.dumps([mine, theirs]).encode())
            control.close_server()
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        seen = f.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(seen) == [child, parent]
    assert not (directory / f"{child}.sock").exists()  # the child removed its own...
    assert ControlClient(parent).request("ping")["pid"] == parent  # ...and not its parent's


def test_ps_lists_live_processes_and_removes_stale_sockets(runtime_dir: Path) -> None:
    get_monitor()
    directory = runtime_dir / "zerorag-guard"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - a process that exits at once, leaving a dead pid
        os._exit(0)
    os.waitpid(pid, 0)
    stale = directory / f"{pid}.sock"
    stale.unlink(missing_ok=True)  # the child may have opened (and left) one of its own
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # a socket file nobody listens on, named after a dead pid
    found = list_processes()
    assert [e["pid"] for e in found] == [os.getpid()]
    assert found[0]["ping"]["cmdline"]
    assert not stale.exists()


@pytest.mark.skipif(
    not hasattr(os, "setuid") or os.getuid() != 0, reason="dropping to another uid needs root"
)
def test_another_user_is_refused(runtime_dir: Path) -> None:
    get_monitor()
    directory = runtime_dir / "zerorag-guard"
    path = directory / f"{os.getpid()}.sock"
    # A second server whose modes let anyone connect, so the SO_PEERCRED check is what stops
    # the stranger (with the real modes the kernel stops it first, checked below as well).
    open_dir = runtime_dir / "open"
    open_dir.mkdir()
    server = ControlServer(get_monitor(), open_dir / "1.sock").start()
    os.chmod(open_dir, 0o755)
    os.chmod(server.path, 0o666)
    os.chmod(runtime_dir, 0o755)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child as nobody
        out: dict[str, Any] = {}
        try:
            os.close(read_end)
            control.close_server()  # its own socket, opened at fork: remove it while still root
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out["uid"] = os.getuid()
            try:
                # A long timeout: on a loaded machine the refusal may take seconds to come.
                out["open"] = _talk(server.path, b'{"cmd": "ping"}\n', timeout=30.0)
            except Exception as exc:
                out["open"] = repr(exc)
            try:
                out["private"] = _talk(path, b'{"cmd": "ping"}\n')
            except Exception as exc:
                out["private"] = type(exc).__name__
        finally:
            os.write(write_end, json.dumps(out).encode())
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end) as f:
            seen = json.loads(f.read())
        os.waitpid(child, 0)
    finally:
        os.chmod(runtime_dir, 0o700)
        server.close()
    assert seen["uid"] == NOBODY, seen
    assert isinstance(seen["open"], dict), seen
    assert seen["open"]["ok"] is False and "permission denied" in seen["open"]["error"]
    assert seen["private"] == "PermissionError"
    assert server.refused == 1
    assert _talk(path, b'{"cmd": "ping"}\n')["ok"]  # its owner still gets in


def test_a_refusal_sent_before_the_request_is_read_reaches_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server refuses at once and closes; on a loaded machine that can happen before the
    # client sends its request, whose send then fails with EPIPE (seen in make test). The
    # client's send is held here until the server has closed, so that order is certain.
    directory = check_private_dir(tmp_path / "zg", create=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / "4242.sock"))
    listener.listen(1)
    closed = threading.Event()
    refusal = b'{"ok": false, "error": "permission denied", "error_type": "PermissionError"}\n'

    def refuse() -> None:
        conn, _ = listener.accept()
        conn.sendall(refusal)
        conn.close()
        closed.set()

    class LateSocket(socket.socket):
        def sendall(self, data: Any, *args: Any) -> None:
            assert closed.wait(10)
            super().sendall(data, *args)

    from zerorag_guard.control import client as client_module

    late = types.SimpleNamespace(
        socket=LateSocket, AF_UNIX=socket.AF_UNIX, SOCK_STREAM=socket.SOCK_STREAM
    )
    monkeypatch.setattr(client_module, "socket", late)
    server = threading.Thread(target=refuse, daemon=True)
    server.start()
    with pytest.raises(RemoteError, match="permission denied") as refused:
        ControlClient(4242, directory=directory).request("ping")
    assert refused.value.error_type == "PermissionError"
    server.join(10)
    listener.close()


def test_starting_a_server_removes_sockets_of_dead_processes(runtime_dir: Path) -> None:
    directory = check_private_dir(runtime_dir / "zerorag-guard", create=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - a process that exits at once, leaving a dead pid
        os._exit(0)
    os.waitpid(pid, 0)
    stale, other = directory / f"{pid}.sock", directory / "notes.txt"
    stale.touch()
    other.touch()
    get_monitor()
    assert not stale.exists() and other.exists()
    other.unlink()


def _half_open(path: Path, partial: bool) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5.0)
    s.connect(str(path))
    if partial:
        s.sendall(b'{"cmd": "pi')
    return s


def test_a_thousand_malformed_requests_leave_the_server_serving(tmp_path: Path) -> None:
    monitor = MemoryMonitor(probe=MemoryProbe(lambda: 50 * 2**20))
    server = ControlServer(
        monitor,
        Path(tempfile.mkdtemp(prefix="zg-", dir="/tmp")) / "s.sock",
        read_timeout=0.5,
        max_connections=32,
    ).start()
    threads_before = threading.active_count()
    errors = 0
    try:
        # 390 connections with one line of bad JSON each.
        for i in range(390):
            errors += not _talk(server.path, b"{not json %d\n" % i)["ok"]
        # 500 malformed requests on one connection: each answered, the connection kept.
        bad_lines = [
            b"[1, 2]",
            b'"ping"',
            b"{}",
            b'{"cmd": 5}',
            b'{"cmd": "shutdown"}',
            b'{"cmd": "cleanup", "strategy": "nuclear"}',
            b'{"cmd": "configure", "changes": {"MEMORY_THRESHOLD_MB": "-1"}}',
            b'{"cmd": "configure", "changes": {"NO_SUCH": 1}}',
            b'{"cmd": "configure"}',
            b"\xff\xfe\x00garbage",
            b"[" * 50_000,
            b"null",
        ]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10.0)
            s.connect(str(server.path))
            reader = s.makefile("rb")
            for i in range(500):
                s.sendall(bad_lines[i % len(bad_lines)] + b"\n")
                reply = json.loads(reader.readline())
                errors += reply["ok"] is False and bool(reply["error"])
            s.sendall(b'{"cmd": "ping"}\n')
            assert json.loads(reader.readline())["ok"]
            reader.close()
        # 10 lines of 10 MB: cut at 1 MiB with an error reply.
        for _ in range(10):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5.0)
                s.connect(str(server.path))
                try:
                    s.sendall(b"x" * (10 << 20) + b"\n")
                except OSError:
                    pass  # the server stopped reading after 1 MiB
                reply = json.loads(s.recv(65536).split(b"\n")[0])
                errors += "longer than 1048576 bytes" in reply["error"]
        # 100 half-open connections, 25 at a time, half of them mid-line: good requests are
        # answered while they hang, and each is closed with an error after the read timeout.
        for _ in range(4):
            hanging = [_half_open(server.path, partial=i % 2 == 0) for i in range(25)]
            assert _talk(server.path, b'{"cmd": "ping"}\n')["ok"]
            for s in hanging:
                reply = json.loads(s.recv(65536).split(b"\n")[0])
                errors += "no complete request line" in reply["error"]
                s.close()
        assert errors == 1000
        health = _talk(server.path, b'{"cmd": "health"}\n')
        assert health["ok"] and health["health"]["memory_usage"]["rss_mb"] == 50.0
        assert server.serving
        assert server.errors >= 1000
    finally:
        server.close()
        shutil.rmtree(server.path.parent, ignore_errors=True)
    assert not server.path.exists()
    deadline = time.monotonic() + 5.0  # connection threads finish just after their last reply
    while threading.active_count() >= threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() < threads_before  # the accept thread is gone too


def test_last_line_without_newline_is_served(tmp_path: Path) -> None:
    monitor = MemoryMonitor(probe=MemoryProbe(lambda: 10 * 2**20))
    server = ControlServer(
        monitor, Path(tempfile.mkdtemp(prefix="zg-", dir="/tmp")) / "s.sock", read_timeout=2.0
    ).start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(str(server.path))
            s.sendall(b'{"cmd": "history"}')
            s.shutdown(socket.SHUT_WR)
            reply = json.loads(s.makefile("rb").readline())
        assert reply["ok"] and reply["samples"][-1][1] == 10.0
    finally:
        server.close()
        shutil.rmtree(server.path.parent, ignore_errors=True)
