"""The memory cap of an isolated worker: a child memory cgroup of the process's own.

Where the process's memory cgroup is writable (root in a container, a delegated v2 subtree), a
worker gets a child cgroup of its own with a hard limit and no swap. When the worker passes it,
the kernel's OOM killer kills that worker and nothing else, and the cgroup's counters say so
(``oom_kill`` in v1's ``memory.oom_control`` or v2's ``memory.events``) and how high it got (v1
``memory.max_usage_in_bytes``, v2 ``memory.peak``). A page is charged to the cgroup of the
process that first touches it: the cap counts what the worker allocates once it has joined (its
calls, the modules they import), not the interpreter it started with.

Where no cgroup can be made, :func:`create` returns None and the worker caps itself with
``RLIMIT_DATA`` instead (see :mod:`zerorag_guard.budget.worker`).
"""

from __future__ import annotations

import os
import time
from typing import Optional

from ..memory.cgroups import _stat_field, own_cgroup
from ..memory.limits import _read

PREFIX = "zerorag-worker-"


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _remove_stale(parent: str) -> None:
    """Remove the worker cgroups a dead process left (its pid is in the name)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX) :].split("-")[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


class WorkerCgroup:
    """One worker's child memory cgroup (``version`` ``v1`` or ``v2``) capped at ``limit``."""

    def __init__(self, path: str, version: str, limit: int) -> None:
        self.path = path
        self.version = version
        self.limit = limit

    @classmethod
    def create(
        cls, limit: int, name: str, proc_root: str = "/proc", sys_root: str = "/"
    ) -> Optional[WorkerCgroup]:
        """A new child cgroup ``PREFIX<pid>-<name>`` capped at ``limit`` bytes, or None where
        the hierarchy is not writable (or v2 does not offer the memory controller below)."""
        own = own_cgroup(proc_root, sys_root)
        if own is None:
            return None
        _remove_stale(own.path)
        path = os.path.join(own.path, f"{PREFIX}{os.getpid()}-{name}")
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError:
            return None
        cgroup = cls(path, own.version, limit)
        try:
            if own.version == "v1":
                _write(os.path.join(path, "memory.limit_in_bytes"), str(limit))
                swap = os.path.join(path, "memory.memsw.limit_in_bytes")
                if os.path.exists(swap):  # memory + swap at the same figure: no swap at all
                    _write(swap, str(limit))
            else:
                if "memory" not in (_read(os.path.join(path, "cgroup.controllers")) or "memory"):
                    raise OSError("the memory controller is not delegated below")
                _write(os.path.join(path, "memory.max"), str(limit))
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    _write(os.path.join(path, "memory.swap.max"), "0")
        except OSError:
            cgroup.remove()
            return None
        return cgroup

    def add(self, pid: int) -> None:
        """Move process ``pid`` into the cgroup."""
        _write(os.path.join(self.path, "cgroup.procs"), str(pid))

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup."""
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        return _stat_field(_read(os.path.join(self.path, name)), "oom_kill") or 0

    def peak_bytes(self) -> Optional[int]:
        """The most the cgroup was charged, where the kernel keeps it."""
        name = "memory.max_usage_in_bytes" if self.version == "v1" else "memory.peak"
        text = _read(os.path.join(self.path, name))
        try:
            return int(text) if text else None
        except ValueError:
            return None

    def remove(self, wait: float = 2.0) -> None:
        """Remove the cgroup once its processes are gone (the kernel may take a moment)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # left for _remove_stale of a later run
                time.sleep(0.01)
