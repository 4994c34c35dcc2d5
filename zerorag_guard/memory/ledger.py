"""The ledger of reservations: concurrent loops that share one headroom do not each plan on it.

Before a batch is handed out its loop reserves what the batch plans to use (its size times the
learned cost per item); the reservation ends when the next batch is planned or the loop ends.
A loop plans on the headroom less the *others'* live reservations.

Loops of one process (threads, asyncio tasks) share an in-process table. Processes that share a
group (one memory cgroup, or the node's ``MemAvailable``) share a file of fixed 32-byte records
(pid, its start time, loop, bytes) in the per-user directory of the control sockets, named after
the group's key, locked with ``fcntl.lockf`` (plus a thread lock: POSIX locks are per process).
There is no server: each process reads and rewrites the file under the lock, once a batch. A
record whose process is gone (no ``/proc/PID``, a zombie, or a pid reused by a process started
later) is dropped at the next reading, so a killed process never holds headroom.

A file that is corrupt (a length not a multiple of the record, a pid or size out of range) is
rebuilt empty; one that is a symlink or belongs to another user is refused, and the ledger keeps
to this process. Nothing here ever stops a job: any error falls back to the in-process table and
is logged once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

from ..rundir import ControlError, check_private_dir, socket_dir

logger = logging.getLogger("zerorag_guard")
RECORD = struct.Struct("<qqqq")  # pid, start time (clock ticks since boot), loop id, bytes
#: A reservation above this is no reservation but a corrupt record.
MAX_BYTES = 1 << 50
#: How long a loop waiting its turn sleeps before it plans again.
POLL_SECONDS = 0.005


def _start_time(pid: int, proc_root: str = "/proc") -> Optional[int]:
    """The start time of a live process (field 22 of ``/proc/PID/stat``); None when it is gone
    or a zombie. Where there is no ``/proc``, 0 for a pid ``kill(pid, 0)`` finds."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        return 0
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


Records = dict[tuple[int, int], tuple[int, int]]  # (pid, loop) -> (start time, bytes)
T = TypeVar("T")


class Turn:
    """One planning step under the ledger's lock: what the *other* loops hold reserved, in this
    process (``others_here``) and in the whole group (``others_all``), and how many loops share
    each (``loops_here``, ``loops_all``: this one included)."""

    __slots__ = ("loops_all", "loops_here", "others_all", "others_here")

    def __init__(self, records: Records, me: tuple[int, int]) -> None:
        self.others_here = self.others_all = 0
        self.loops_here = self.loops_all = 1
        for key, (_, nbytes) in records.items():
            if key != me:
                self.others_all += nbytes
                self.loops_all += 1
                if key[0] == me[0]:
                    self.others_here += nbytes
                    self.loops_here += 1


class Ledger:
    """Reservations of the loops sharing one group; ``path=None`` keeps to this process."""

    def __init__(
        self,
        path: Optional[Path] = None,
        proc_root: str = "/proc",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._sleep = sleep
        self._lock = threading.Lock()
        self._table: Records = {}
        self._proc_root = proc_root
        self._path = path
        self._fd: Optional[int] = None
        self._me = (0, 0)  # (pid, start time) of this process, read again after a fork
        self.refused: Optional[str] = None
        self._length = 0  # of the file as last loaded
        self._held: dict[int, int] = {}  # loop -> the bytes this process last wrote for it

    def _identity(self) -> tuple[int, int]:
        pid = os.getpid()
        if self._me[0] != pid:
            self._me = (pid, _start_time(pid, self._proc_root) or 0)
            self._table = {k: v for k, v in self._table.items() if k[0] == pid}
            self._held = {}
            if self._fd is not None:  # the parent's descriptor: its locks are not ours
                os.close(self._fd)
                self._fd = None
        return self._me

    # -- the file
    def _open(self) -> Optional[int]:
        if self._path is None or self.refused is not None or self._fd is not None:
            return self._fd
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            return self._refuse(f"cannot open {self._path}: {err}")
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return self._refuse(f"{self._path} belongs to uid {st.st_uid} or is no regular file")
        self._fd = fd
        return fd

    def _refuse(self, why: str) -> Optional[int]:
        """Keep to this process from now on; returns no descriptor."""
        self.refused = why
        logger.warning("memory ledger: %s; reservations kept to this process", why)
        return None

    def _load(self, fd: int) -> Records:
        data = os.pread(fd, 1 << 20, 0)
        self._length = len(data)
        records = self._parse(data)
        if records is None:
            logger.warning("memory ledger %s: no whole records; rebuilt", self._path)
            return {}
        return records

    def _parse(self, data: bytes) -> Optional[Records]:
        """The records of live processes in a file's bytes; None if they are not whole records
        (a length not a multiple of one, a pid or a size out of range)."""
        if len(data) % RECORD.size:
            return None
        records: Records = {}
        alive: dict[int, Optional[int]] = {self._me[0]: self._me[1]}
        for pid, start, loop, nbytes in RECORD.iter_unpack(data):
            if pid <= 0 or not 0 <= nbytes <= MAX_BYTES:
                return None
            if pid not in alive:
                alive[pid] = _start_time(pid, self._proc_root)
            if alive[pid] == start:
                records[(pid, loop)] = (start, nbytes)
        return records

    def _peek(self, me: tuple[int, int]) -> Optional[Records]:
        """The shared file's records read without its lock, or None (no file open, a fork since,
        not whole records, or ``me`` not holding there what this process last wrote for it)."""
        fd = self._fd
        if fd is None or self._me[0] != me[0]:
            return None
        try:
            records = self._parse(os.pread(fd, 1 << 20, 0))
        except OSError:
            return None
        held = self._held.get(me[1])
        if records is None or held is None or records.get(me) != (self._me[1], held):
            return None
        return records

    def _store(self, fd: int, records: Records, length: int) -> None:
        data = b"".join(RECORD.pack(p, s, lp, b) for (p, lp), (s, b) in records.items())
        os.pwrite(fd, data, 0)
        if len(data) != length:  # most plans replace one record's bytes: the length stays
            os.ftruncate(fd, len(data))

    def _update(self, change: Callable[[Records], T]) -> T:
        """``change(records)`` on the live records, under the locks; what it changes is kept (in
        the file if shared), unless it raises.

        A plain ``with`` on the thread lock, not a generator context manager: a
        ``KeyboardInterrupt`` landing in a generator's ``__enter__`` after it took the lock, and
        before the ``with`` had its ``__exit__``, left the lock held until a garbage collection,
        and the next plan of the same thread waited on it for ever (seen once in 25 runs of
        ``interrupt_job.py`` on a loaded machine).
        """
        with self._lock:
            self._identity()
            fd = self._open()
            if fd is None:
                return change(self._table)
            try:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX)
                except OSError as err:
                    self._refuse(f"cannot lock {self._path}: {err}")
                    return change(self._table)
                try:
                    records, shared = self._load(fd), True
                except OSError as err:
                    self._refuse(f"cannot read {self._path}: {err}")
                    records, shared = self._table, False
                loaded = dict(records) if shared else None
                result = change(records)
                # A loop whose batch plans what the last one did changes nothing: no write.
                if shared and (records != loaded or len(records) * RECORD.size != self._length):
                    try:
                        self._store(fd, records, self._length)
                    except OSError as err:
                        self._refuse(f"cannot write {self._path}: {err}")
                return result
            finally:
                with contextlib.suppress(OSError):
                    fcntl.lockf(fd, fcntl.LOCK_UN)

    # -- reservations
    def plan(self, loop: int, size_for: Callable[[Turn], int]) -> int:
        """Under the lock: ``size_for(turn)`` chooses the batch and returns the bytes it reserves,
        which replace this loop's reservation. Returns those bytes. The loop counts as sharing
        the group (``loops_*``) from its first plan until :meth:`release`, even at 0 bytes."""
        # Most batches plan what the last one did: then the file is read without its lock and
        # not written (a lock, a read and a write less: about 5 µs a batch). It is safe whatever
        # the reading shows of the other loops: this loop keeps what every other loop planned
        # around, and any other result is planned again under the lock.
        me = (os.getpid(), loop)
        peeked = self._peek(me)
        if peeked is not None:
            nbytes = max(0, int(size_for(Turn(peeked, me))))
            if nbytes == self._held[loop]:
                return nbytes

        def replace(records: Records) -> int:
            pid, start = self._me
            nbytes = max(0, int(size_for(Turn(records, (pid, loop)))))
            records[(pid, loop)] = (start, nbytes)
            if records is not self._table:
                self._held[loop] = nbytes
            return nbytes

        return self._update(replace)

    def release(self, loop: int) -> None:
        """End this loop's reservation and its share (the loop ended)."""

        def end(records: Records) -> None:
            records.pop((self._me[0], loop), None)
            self._held.pop(loop, None)

        self._update(end)

    def wait(self) -> None:
        """Pause a loop whose turn it is not (others hold the headroom) before it plans again."""
        self._sleep(POLL_SECONDS)

    def reservations(self) -> list[dict[str, int]]:
        """Every live loop of the group: pid, loop and the bytes it holds reserved."""
        return self._update(
            lambda records: [
                {"pid": p, "loop": lp, "bytes": b} for (p, lp), (_, b) in records.items()
            ]
        )


_ledgers: dict[str, Ledger] = {}
_ledgers_lock = threading.Lock()


def ledger_for(key: Optional[str]) -> Ledger:
    """The ledger of a group (``key`` names it: ``cgroup:PATH``, or ``node`` for the host's
    ``MemAvailable``), shared by every budget of this process in that group; ``None``: this
    process's own."""
    with _ledgers_lock:
        ledger = _ledgers.get(key or "")
        if ledger is None:
            ledger = _ledgers[key or ""] = Ledger(_ledger_path(key) if key else None)
        return ledger


def known_ledgers() -> dict[str, Ledger]:
    """The ledgers this process has used, by key (``""``: its own)."""
    with _ledgers_lock:
        return dict(_ledgers)


def _ledger_path(key: str) -> Optional[Path]:
    try:
        directory = check_private_dir(socket_dir(), create=True)
    except (ControlError, OSError) as err:
        logger.warning("memory ledger: %s; reservations kept to this process", err)
        return None
    return directory / f"ledger-{hashlib.sha1(key.encode()).hexdigest()[:16]}.bin"
