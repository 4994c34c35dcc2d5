"""The process's own memory cgroup: where it is, its working set, and its peak over a loop.

The working set is what the kubelet counts: usage less the inactive file cache the kernel can
reclaim (v1 ``memory.usage_in_bytes`` less ``total_inactive_file`` of ``memory.stat``, which is
hierarchical; v2 ``memory.current`` less ``inactive_file``), so page cache never shrinks a
batch. Usage costs one ``pread`` (about 4 µs here); ``memory.stat`` about 16 µs more, as the
kernel sums every counter of the hierarchy. :class:`WorkingSet` reads it only when the cache
may have moved in the one direction that would make the working set read low (see there).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .limits import _cgroup_dirs, _read, cgroup_usage

#: The inactive file cache is read again at least this often (the monitor's sampling interval).
INACTIVE_FILE_SECONDS = 0.1


@dataclass(frozen=True)
class Cgroup:
    """The process's own memory cgroup: ``version`` (``v1``/``v2``) and its directory."""

    version: str
    path: str


def own_cgroup(proc_root: str = "/proc", sys_root: str = "/") -> Optional[Cgroup]:
    """The memory cgroup this process is in, where one is mounted."""
    for version, directory, _ in _cgroup_dirs(proc_root, sys_root):
        if os.path.isdir(directory):
            return Cgroup(version, directory)
    return None


def _stat_field(text: Optional[str], name: str) -> Optional[int]:
    """The value of the ``name N`` line of a ``memory.stat`` (found, not split: once a batch)."""
    text = text or ""
    at = text.find(name + " ")
    while at > 0 and text[at - 1] != "\n":  # "inactive_file" inside "total_inactive_file"
        at = text.find(name + " ", at + 1)
    if at < 0:
        return None
    end = text.find("\n", at)
    try:
        return int(text[at + len(name) + 1 : None if end < 0 else end])
    except ValueError:
        return None


def cgroup_working_set(
    cgroup: Cgroup, read: Callable[[str], Optional[str]] = _read
) -> Optional[int]:
    """Usage less inactive file cache, read now, in bytes (see :meth:`WorkingSet.read`)."""
    return WorkingSet(cgroup, read).read()


class WorkingSet:
    """A cgroup's working set, once a batch, with ``memory.stat`` read only when it matters.

    Usage is read every time. The inactive file cache is read again when it is older than
    :data:`INACTIVE_FILE_SECONDS`, when usage fell since the last reading (pages left the cgroup:
    freed, or cache the kernel reclaimed, the one way cache shrinks that makes a stale figure
    read the working set low), and whenever usage reaches ``ceiling`` (all the headroom left
    is cache, so its exact size is the headroom; the kernel reclaims only there). In between,
    growth of usage counts whole: new cache reads as working set until the next reading, which
    errs on the side of smaller batches. Cache that turns active (read twice) stops counting as
    cache at the next reading; it was never free memory to the OOM killer either.
    """

    def __init__(
        self,
        cgroup: Cgroup,
        read: Callable[[str], Optional[str]] = _read,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cgroup = cgroup
        self._read = read
        self._clock = clock
        self._stat = os.path.join(cgroup.path, "memory.stat")
        self._field = "total_inactive_file" if cgroup.version == "v1" else "inactive_file"
        self._cache = 0
        self._usage = -1  # at the last reading; -1: none yet
        self._then = 0.0  # when the cache was read
        #: How many times ``memory.stat`` was read (tests count them).
        self.stat_reads = 0

    def read(self, ceiling: Optional[int] = None) -> Optional[int]:
        """The working set in bytes (never below 0); None where usage is unreadable. Without a
        readable ``memory.stat`` the whole usage counts: too much, never too little."""
        usage = cgroup_usage(self._cgroup.version, self._cgroup.path, self._read)
        if usage is None:
            return None
        now = self._clock()
        if (
            self._usage < 0
            or usage < self._usage
            or now - self._then >= INACTIVE_FILE_SECONDS
            or (ceiling is not None and usage >= ceiling)
        ):
            self.stat_reads += 1
            self._cache = max(0, _stat_field(self._read(self._stat), self._field) or 0)
            self._then = now
        self._usage = usage
        return max(0, usage - self._cache)


class GroupPeak:
    """The peak of a cgroup over one chunking loop.

    Exact where the kernel keeps it privately: cgroup v2's ``memory.peak`` is reset for one
    file descriptor by writing to it (Linux 6.12+), so this loop's reading is its own and no
    other process's mark moves. Elsewhere (v1, whose ``memory.max_usage_in_bytes`` is one
    counter for every process in the cgroup and is never written here, or an older v2 kernel)
    the peak is the highest working set :meth:`note` saw, once a batch. ``source`` says which:
    ``"memory.peak"`` (usage, page cache included) or ``"sampled"`` (the working set).
    """

    def __init__(self, cgroup: Cgroup) -> None:
        self._fd: Optional[int] = None
        self._sampled = 0
        self.source = "sampled"
        if cgroup.version == "v2":
            try:
                fd = os.open(os.path.join(cgroup.path, "memory.peak"), os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                return
            try:
                os.write(fd, b"reset\n")  # an older kernel refuses: the file is read-only
            except OSError:
                os.close(fd)
                return
            self._fd, self.source = fd, "memory.peak"

    def note(self, working_set: Optional[int]) -> None:
        if working_set is not None and working_set > self._sampled:
            self._sampled = working_set

    def close(self) -> Optional[int]:
        """The peak in bytes (None where nothing was seen); the descriptor is closed."""
        if self._fd is None:
            return self._sampled or None
        fd, self._fd = self._fd, None
        try:
            return int(os.pread(fd, 64, 0))
        except (OSError, ValueError):
            self.source = "sampled"
            return self._sampled or None
        finally:
            os.close(fd)
