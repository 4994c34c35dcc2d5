"""The ledger of reservations: loops see each other's, a dead process's are dropped at once, and
a file that is corrupt, a symlink or another user's is rebuilt or refused, never trusted."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from zerorag_guard.memory.ledger import RECORD, Ledger, Turn, _start_time

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def reserve(ledger: Ledger, loop: int, nbytes: int) -> Turn:
    seen: list[Turn] = []

    def size_for(turn: Turn) -> int:
        seen.append(turn)
        return nbytes

    ledger.plan(loop, size_for)
    return seen[0]


def test_in_process_loops_see_the_others_reservations_not_their_own() -> None:
    ledger = Ledger()
    assert reserve(ledger, 1, 100).others_here == 0
    assert reserve(ledger, 2, 30).others_here == 100
    turn = reserve(ledger, 1, 50)  # loop 1's next batch replaces its reservation
    assert (turn.others_here, turn.others_all) == (30, 30)
    turn = reserve(ledger, 3, 0)
    assert (turn.others_here, turn.loops_here, turn.loops_all) == (80, 3, 3)
    ledger.release(2)
    turn = reserve(ledger, 3, 0)  # a loop at 0 bytes still shares the group until it ends
    assert (turn.others_here, turn.loops_here) == (50, 2)
    ledger.release(3)
    assert ledger.reservations() == [{"pid": os.getpid(), "loop": 1, "bytes": 50}]


def test_threads_planning_at_once_each_count_the_others() -> None:
    ledger, start = Ledger(), threading.Barrier(8)
    seen: dict[int, int] = {}

    def loop(n: int) -> None:
        start.wait()
        for _ in range(200):
            reserve(ledger, n, 10)
        seen[n] = reserve(ledger, n, 10).others_here

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["bytes"] for r in ledger.reservations()) == 80
    assert all(v <= 70 for v in seen.values())


@linux_only
def test_a_file_ledger_is_shared_and_a_killed_process_holds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from zerorag_guard.memory.ledger import Ledger
        ledger = Ledger(Path({str(path)!r}))
        ledger.plan(7, lambda turn: 300 * 2**20)
        print("reserved", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "reserved"
        ledger = Ledger(path)
        assert reserve(ledger, 1, 10 * 2**20).others_all == 300 * 2**20
        assert reserve(ledger, 1, 10 * 2**20).others_here == 0  # another process's
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert reserve(ledger, 1, 10 * 2**20).others_all == 0  # at once, no timeout
        assert ledger.reservations() == [{"pid": os.getpid(), "loop": 1, "bytes": 10 * 2**20}]
    finally:
        child.kill()
        child.wait()


@linux_only
def test_a_plan_that_changes_nothing_takes_no_lock_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, locks, writes = tmp_path / "ledger.bin", [], []
    lockf, pwrite = fcntl.lockf, os.pwrite
    monkeypatch.setattr(fcntl, "lockf", lambda fd, op: (locks.append(op), lockf(fd, op))[1])
    monkeypatch.setattr(os, "pwrite", lambda fd, b, at: (writes.append(b), pwrite(fd, b, at))[1])
    ledger = Ledger(path)
    reserve(ledger, 1, 64)
    assert (len(locks), len(writes)) == (2, 1)  # the first plan: locked, written
    for _ in range(5):
        reserve(ledger, 1, 64)
    assert (len(locks), len(writes)) == (2, 1)
    # Another process's reservation appears (pid 1 stands in): seen without the lock.
    with path.open("ab") as f:
        f.write(RECORD.pack(1, _start_time(1) or 0, 9, 100))
    assert reserve(ledger, 1, 64).others_all == 100
    assert (len(locks), len(writes)) == (2, 1)
    reserve(ledger, 1, 32)  # a change: planned again under the lock, and written
    assert (len(locks), len(writes)) == (4, 2)
    assert {r["loop"]: r["bytes"] for r in ledger.reservations()} == {1: 32, 9: 100}
    # Another process rebuilt the file (this loop's record is gone): planned under the lock.
    path.write_bytes(b"")
    locks.clear()
    assert reserve(ledger, 1, 32).others_all == 0
    assert len(locks) == 2
    assert path.read_bytes() == RECORD.pack(os.getpid(), ledger._me[1], 1, 32)


def fake_proc(tmp_path: Path, pid: int, state: str, start: int) -> str:
    (tmp_path / str(pid)).mkdir(parents=True, exist_ok=True)
    rest = " ".join(["0"] * 18)
    (tmp_path / str(pid) / "stat").write_text(f"{pid} (py (x)) {state} {rest} {start} 0 0\n")
    return str(tmp_path)


def test_zombies_and_reused_pids_hold_nothing(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    me = os.getpid()
    fake_proc(proc, me, "R", 1000)
    fake_proc(proc, 501, "S", 2000)  # alive, and the record's own process
    fake_proc(proc, 502, "Z", 3000)  # a zombie: killed, not yet reaped
    fake_proc(proc, 503, "S", 9999)  # pid reused: its record's process started at 4000
    path = tmp_path / "ledger.bin"
    path.write_bytes(
        b"".join(
            RECORD.pack(p, s, 1, 100) for p, s in [(501, 2000), (502, 3000), (503, 4000), (504, 1)]
        )
    )
    ledger = Ledger(path, proc_root=str(proc))
    assert reserve(ledger, 1, 5).others_all == 100


@pytest.mark.parametrize(
    "content",
    [
        b"\x00" * (RECORD.size + 3),  # truncated mid-record
        RECORD.pack(-4, 0, 1, 100),  # no such pid
        RECORD.pack(os.getpid(), 0, 1, -100),  # a negative reservation
        RECORD.pack(os.getpid(), 0, 1, 1 << 60),  # a reservation of an exbibyte
    ],
)
def test_a_corrupt_ledger_is_rebuilt(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ledger.bin"
    path.write_bytes(content)
    ledger = Ledger(path)
    assert reserve(ledger, 1, 64).others_all == 0
    assert ledger.refused is None
    assert path.read_bytes() == RECORD.pack(os.getpid(), ledger._me[1], 1, 64)


def test_a_symlinked_ledger_is_refused_and_the_job_goes_on(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    path = tmp_path / "ledger.bin"
    path.symlink_to(target)
    ledger = Ledger(path)
    reserve(ledger, 1, 64)
    assert ledger.refused is not None and "cannot open" in ledger.refused
    assert reserve(ledger, 2, 1).others_here == 64  # kept in this process
    assert target.read_bytes() == b""


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_another_users_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    path.write_bytes(RECORD.pack(1, 0, 1, 1 << 30))
    os.chown(path, 12345, 12345)
    ledger = Ledger(path)
    assert reserve(ledger, 1, 64).others_all == 0  # its 1 GiB is not believed
    assert ledger.refused is not None and "uid 12345" in ledger.refused
