"""Group readings: the memory a budget's scope counts, beyond this process's RSS.

- **cgroup**: the working set of the process's own memory cgroup as the kubelet counts it, usage
  less the inactive file cache the kernel can reclaim (:mod:`zerorag_guard.memory.cgroups`);
- **tree**: this process and all its descendants, each counted by its PSS
  (``/proc/PID/smaps_rollup``): a page shared by *n* processes after ``fork`` counts 1/*n* in
  each, so the sum counts it once. USS would count it in none, and RSS *n* times. PSS costs the
  kernel a walk of each process's page tables (about 60 µs for a 100 MB process here), paid once
  a reading, never per guarded call;
- **host**: ``MemAvailable`` of ``/proc/meminfo``, what the host can still give without swapping;
- **pressure**: PSI's ``some avg10`` (the cgroup's ``memory.pressure`` on v2, else
  ``/proc/pressure/memory``): the share of the last 10 s some task waited on memory reclaim.

Every reader takes its roots (``proc_root``, a cgroup directory) so tests use fake trees; a file
that is missing or unreadable reads as None, never as an error: a reading must never stop a job.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional

from .cgroups import Cgroup, GroupPeak, WorkingSet, cgroup_working_set, own_cgroup
from .ledger import Ledger, known_ledgers, ledger_for
from .limits import _read, cgroup_limits, cgroup_usage

KB = 1024


def cgroup_limit(cgroup: Cgroup, proc_root: str = "/proc", sys_root: str = "/") -> Optional[int]:
    """The tightest limit on the cgroup or its ancestors, in bytes; None when there is none."""
    limits = [lim.bytes for lim in cgroup_limits(proc_root, sys_root)]
    return min(limits) if limits else None


def _children(pid: int, proc_root: str) -> Optional[list[int]]:
    """The children of ``pid`` (``/proc/PID/task/*/children``); None where the kernel lacks it."""
    task_dir = os.path.join(proc_root, str(pid), "task")
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        text = _read(os.path.join(task_dir, tid, "children"))
        if text is None:
            return None
        found += [int(p) for p in text.split() if p.isdigit()]
    return found


def _children_by_scan(proc_root: str) -> dict[int, list[int]]:
    """Parent -> children from every ``/proc/PID/stat`` (the portable, slower way)."""
    out: dict[int, list[int]] = {}
    try:
        names = os.listdir(proc_root)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        text = _read(os.path.join(proc_root, name, "stat"))
        if not text:
            continue
        fields = text.rpartition(")")[2].split()  # the command may hold spaces and parentheses
        if len(fields) >= 2 and fields[1].isdigit():
            out.setdefault(int(fields[1]), []).append(int(name))
    return out


def tree_pids(root: int, proc_root: str = "/proc") -> list[int]:
    """``root`` and every live descendant, parents before children."""
    pids, table = [root], None
    for pid in pids:  # grows as it goes: breadth first
        kids = _children(pid, proc_root) if table is None else table.get(pid, [])
        if kids is None:
            table = _children_by_scan(proc_root)
            kids = table.get(pid, [])
        pids += [k for k in kids if k not in pids]
    return pids


def pss_bytes(pid: int, proc_root: str = "/proc") -> Optional[int]:
    """The PSS of ``pid`` in bytes; None when the process is gone or its rollup unreadable."""
    return _kb_field(_read(os.path.join(proc_root, str(pid), "smaps_rollup")), "Pss")


def _kb_field(text: Optional[str], name: str) -> Optional[int]:
    """``name: N kB`` (the form of meminfo and smaps) in bytes."""
    for line in (text or "").splitlines():
        key, _, rest = line.partition(":")
        if key == name:
            try:
                return int(rest.split()[0]) * KB
            except (ValueError, IndexError):
                return None
    return None


def tree_bytes(root: int, proc_root: str = "/proc") -> int:
    """The memory of ``root`` and its descendants, each by its PSS (a child that exits between
    the listing and its reading counts 0: its memory is gone)."""
    return sum(pss_bytes(pid, proc_root) or 0 for pid in tree_pids(root, proc_root))


def host_available(
    proc_root: str = "/proc", read: Callable[[str], Optional[str]] = _read
) -> Optional[int]:
    """``MemAvailable`` in bytes, or None where the kernel does not report it."""
    return _kb_field(read(os.path.join(proc_root, "meminfo")), "MemAvailable")


#: ``MemAvailable`` is read again at least this often; in between, this process's own growth
#: is taken off the last reading (see :class:`HostAvailable`).
AVAILABLE_SECONDS = 0.1
#: Below this much estimated ``MemAvailable`` it is read every time.
AVAILABLE_TIGHT = 512 * KB * KB


class HostAvailable:
    """``MemAvailable`` once a batch, for about 1 µs instead of 20-30 (the kernel writes all of
    ``/proc/meminfo`` at each read, and a slow system call slows the Python after it).

    Read at most every :data:`AVAILABLE_SECONDS`, and every time once it is under
    :data:`AVAILABLE_TIGHT`. In between, what this process grew since the reading (its RSS, or
    its tree's memory, as ``own`` gives it) is taken off the reading: the loop's own batches
    are never counted on twice. What other programs take in those 100 ms is left to the reserve
    a budget never plans on (:data:`~zerorag_guard.budget.scope.HOST_RESERVE`, 256 MB).
    """

    def __init__(
        self,
        read: Callable[[], Optional[int]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._clock = clock
        self._value: Optional[int] = None
        self._own = 0  # this process's memory at the reading
        self._then = float("-inf")
        #: How many times ``/proc/meminfo`` was read (tests count them).
        self.reads = 0

    def read(self, own: int = 0) -> Optional[int]:
        """``MemAvailable`` in bytes, less ``own``'s growth since it was read; None where the
        kernel does not report it."""
        now = self._clock()
        value = self._value
        if value is not None:
            value -= max(0, own - self._own)
        if value is None or value < AVAILABLE_TIGHT or now - self._then >= AVAILABLE_SECONDS:
            self.reads += 1
            value = self._value = self._read()
            self._own, self._then = own, now
        return value


class KeptFiles:
    """Files read again and again through descriptors kept open: the kernel writes a cgroup or
    ``/proc`` file afresh at each read from offset 0, so a reading is one ``pread`` (1-10 µs
    here) rather than an open, a read and a close (25-70 µs for ``memory.stat``)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str) -> Optional[str]:
        fd = self._fds.get(path)
        try:
            if fd is None:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                kept = self._fds.setdefault(path, fd)
                if kept != fd:  # another thread opened it first
                    os.close(fd)
                    fd = kept
            return os.pread(fd, 1 << 16, 0).decode()
        except OSError:
            if fd is not None and self._fds.pop(path, None) == fd:
                os.close(fd)
            return None


def pressure_avg10(path: str) -> Optional[float]:
    """PSI's ``some avg10`` (percent) from a pressure file, or None where there is none."""
    for line in (_read(path) or "").splitlines():
        kind, *fields = line.split()
        if kind != "some":
            continue
        for item in fields:
            key, _, value = item.partition("=")
            if key == "avg10":
                try:
                    return float(value)
                except ValueError:
                    return None
    return None


def pressure_file(cgroup: Optional[Cgroup], proc_root: str = "/proc") -> str:
    """Where this process's memory pressure is read: its v2 cgroup's file, else the system's."""
    if cgroup is not None and cgroup.version == "v2":
        own = os.path.join(cgroup.path, "memory.pressure")
        if os.path.exists(own):
            return own
    return os.path.join(proc_root, "pressure", "memory")


#: PSI's averages move slowly (avg10 is a 10 s average): read at most this often.
PRESSURE_READ_SECONDS = 1.0


class PressureGauge:
    """Whether the kernel is reclaiming hard: PSI's ``some avg10`` at or above ``percent`` (a
    10-second average, so one reading above it is pressure sustained for seconds, not a blip).
    Read at most every :data:`PRESSURE_READ_SECONDS`; ``percent`` 0 turns it off."""

    def __init__(self, read: Callable[[], Optional[float]], clock: Callable[[], float]) -> None:
        self._read = read
        self._clock = clock
        self._at = float("-inf")
        #: The latest ``some avg10`` read (percent), or None where the kernel has no PSI.
        self.value: Optional[float] = None

    def pressed(self, percent: float) -> bool:
        if percent <= 0:
            return False
        now = self._clock()
        if now - self._at >= PRESSURE_READ_SECONDS:
            self._at = now
            self.value = self._read()
        return self.value is not None and self.value >= percent


class SampledWindow:
    """The peak of a group reading over a batch, sampled every ``interval`` seconds by a thread
    of its own (a group has no kernel high-water mark this process may reset: v1's
    ``memory.max_usage_in_bytes`` is one counter for every process in the cgroup). It has the
    interface of :class:`~zerorag_guard.memory.probes.PeakWindow`; ``exact`` is True because the
    whole batch is watched, not only its two ends."""

    exact = True

    def __init__(self, read: Callable[[], int], start: int, interval: float = 0.01) -> None:
        self._read = read
        self._peak = start
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, args=(interval,), name="zerorag-guard-group-peak", daemon=True
        )
        self._thread.start()

    def _watch(self, interval: float) -> None:
        while not self._done.wait(interval):
            self.note(self._read())

    def note(self, reading: int) -> None:
        if reading > self._peak:
            self._peak = reading

    def close(self, read: bool = True) -> int:
        if not self._done.is_set():
            self._done.set()
            self._thread.join()
            if read:
                self.note(self._read())
        return self._peak


class GroupReader:
    """The group readings a monitor offers its budgets, read at most once a batch.

    ``enabled=False`` reads nothing (every reading None): the default for monitors built on
    injected readings, so their tests never see the real machine's cgroup or host. A reader
    given a ``ledger`` keeps every reservation in it instead of the shared ones (tests over
    fake trees). Tests of the scopes may pass any object with the same methods.
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        sys_root: str = "/",
        enabled: bool = True,
        ledger: Optional[Ledger] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self._clock = clock
        self._working_set: Optional[WorkingSet] = None
        self._available: Optional[HostAvailable] = None
        self._proc_root = proc_root
        self._sys_root = sys_root
        self._cgroup: Optional[Cgroup] = None
        self._cgroup_read = False
        self._own_ledger = ledger if ledger is not None or enabled else Ledger()
        self._files = KeptFiles()

    @property
    def cgroup(self) -> Optional[Cgroup]:
        """The process's own memory cgroup (read once), or None."""
        if not self._cgroup_read and self.enabled:
            self._cgroup = own_cgroup(self._proc_root, self._sys_root)
            self._cgroup_read = True
        return self._cgroup

    def ledger(self, key: Optional[str]) -> Ledger:
        """The ledger of the group ``key`` names (None: this process); a reader that reads
        nothing keeps one of its own, so budgets on injected monitors never meet real ones."""
        return ledger_for(key) if self._own_ledger is None else self._own_ledger

    def working_set(self, ceiling: Optional[int] = None) -> Optional[int]:
        """The cgroup's working set, a batch's reading (see :class:`~.cgroups.WorkingSet` for
        when its page cache is read again, ``ceiling`` among them); None without a cgroup."""
        if self._working_set is None:
            cgroup = self.cgroup
            if cgroup is None:
                return None
            self._working_set = WorkingSet(cgroup, self._files.read, self._clock)
        return self._working_set.read(ceiling)

    def peak(self) -> Optional[GroupPeak]:
        """A :class:`GroupPeak` of the process's cgroup from now on, or None without one."""
        cgroup = self.cgroup
        return None if cgroup is None else GroupPeak(cgroup)

    def tree(self, root: int) -> Optional[int]:
        return tree_bytes(root, self._proc_root) if self.enabled else None

    def host_available(self, own: Optional[int] = None) -> Optional[int]:
        """``MemAvailable``: read now, or with ``own`` (this process's memory now) a batch's
        reading, read again only when needed (see :class:`HostAvailable`)."""
        if not self.enabled:
            return None
        if own is None:
            return host_available(self._proc_root, self._files.read)
        if self._available is None:
            self._available = HostAvailable(
                lambda: host_available(self._proc_root, self._files.read), self._clock
            )
        return self._available.read(own)

    def pressure(self) -> Optional[float]:
        if not self.enabled:
            return None
        return pressure_avg10(pressure_file(self.cgroup, self._proc_root))

    def reservations(self) -> list[dict[str, Any]]:
        """Every loop holding a reservation in the ledgers this process uses (its own, its
        cgroup's, the node's; other processes' loops included): ledger, pid, loop, bytes."""
        ledgers = known_ledgers() if self._own_ledger is None else {"": self._own_ledger}
        return [
            {"ledger": key or "process", **record}
            for key, ledger in sorted(ledgers.items())
            for record in ledger.reservations()
        ]

    def status(self) -> dict[str, Any]:
        """The health report's ``group`` section: the cgroup (path, usage, working set,
        limit), the host's ``MemAvailable``, PSI, and :meth:`reservations`."""
        cgroup = self.cgroup
        usage = limit = working_set = None
        if cgroup is not None:
            usage = cgroup_usage(cgroup.version, cgroup.path)
            limit = cgroup_limit(cgroup, self._proc_root, self._sys_root)
            working_set = cgroup_working_set(cgroup, self._files.read)
        loops = self.reservations()
        return {
            "enabled": self.enabled,
            "cgroup": None if cgroup is None else {"version": cgroup.version, "path": cgroup.path},
            "cgroup_usage_mb": _mb(usage),
            "cgroup_working_set_mb": _mb(working_set),
            "cgroup_limit_mb": _mb(limit),
            "host_available_mb": _mb(self.host_available()),
            "pressure_some_avg10": self.pressure(),
            "reservations": loops,
            "reserved_mb": _mb(sum(loop["bytes"] for loop in loops)),
            "processes_reserving": len({loop["pid"] for loop in loops if loop["bytes"]}),
        }


def _mb(value: Optional[int]) -> Optional[float]:
    return None if value is None else round(value / (KB * KB), 1)
