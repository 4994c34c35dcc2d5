"""Real memory cgroups for system tests: find the process's own cgroup, make a child with a limit,
run a subprocess inside it, and remove it afterwards.

Works with cgroup v1 (a ``memory`` controller hierarchy) and v2 (``memory`` in the unified
hierarchy's ``cgroup.controllers``). Anything that stops it is reported as a reason to skip,
never as a failure: :func:`unavailable_reason` says why, or returns None.

The parsing here is deliberately independent of ``zerorag_guard.memory.limits``, so a test built
on it checks the library against a second reading of the kernel's files.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class OwnCgroup:
    """The memory cgroup this process is in: ``version`` (``v1``/``v2``) and its directory."""

    version: str
    path: str


def _mount_points() -> dict[str, tuple[str, str]]:
    """``{"v1": (root, mount point), "v2": (root, mount point)}`` for the memory hierarchies."""
    found: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(tail) < 3:
                continue
            if tail[0] == "cgroup" and "memory" in tail[2].split(","):
                found.setdefault("v1", (fields[3], fields[4]))
            elif tail[0] == "cgroup2":
                found.setdefault("v2", (fields[3], fields[4]))
    return found


def own_memory_cgroup() -> Optional[OwnCgroup]:
    """The process's own memory cgroup, v1 preferred where both exist (hybrid hosts)."""
    try:
        mounts = _mount_points()
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    paths: dict[str, str] = {}
    for line in lines:
        hier, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            paths["v1"] = path
        elif hier == "0" and controllers == "":
            paths["v2"] = path
    for version in ("v1", "v2"):
        if version not in paths or version not in mounts:
            continue
        root, mount = mounts[version]
        path = paths[version]
        if root != "/" and path.startswith(root):
            path = path[len(root) :]
        directory = os.path.normpath(mount + "/" + path.lstrip("/"))
        if version == "v2":
            try:
                with open(os.path.join(directory, "cgroup.controllers")) as f:
                    if "memory" not in f.read().split():
                        continue
            except OSError:
                continue
        return OwnCgroup(version, directory)
    return None


def unavailable_reason() -> Optional[str]:
    """Why a child memory cgroup cannot be made here, or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root: cannot create cgroups"
    own = own_memory_cgroup()
    if own is None:
        return "no memory cgroup controller (neither v1 'memory' nor v2 with 'memory' enabled)"
    if not os.access(own.path, os.W_OK):
        return f"own memory cgroup {own.path} is not writable"
    return None


@dataclass(frozen=True)
class ChildCgroup:
    """A child memory cgroup made by :func:`child_memory_cgroup`; ``limit_bytes`` as the kernel
    stored it (rounded to pages)."""

    version: str
    path: str
    limit_bytes: int

    @property
    def limit_file(self) -> str:
        name = "memory.limit_in_bytes" if self.version == "v1" else "memory.max"
        return os.path.join(self.path, name)

    def run(self, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this cgroup: a shell joins it, then execs the command, so the
        command is in the cgroup from its first instruction."""
        with self.popen(argv) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def popen(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start ``argv`` inside this cgroup (as :meth:`run` does) without waiting for it."""
        procs = os.path.join(self.path, "cgroup.procs")
        script = 'echo $$ > "$0" && exec "$@"'
        return subprocess.Popen(
            ["/bin/sh", "-c", script, procs, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


@contextlib.contextmanager
def child_memory_cgroup(limit_bytes: int) -> Iterator[ChildCgroup]:
    """Create a child of the process's own memory cgroup with ``limit_bytes``; remove it after.

    Raises ``RuntimeError`` with the reason when the cgroup cannot be made; callers skip on it.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    own = own_memory_cgroup()
    assert own is not None
    path = os.path.join(own.path, f"zerorag-guard-test-{uuid.uuid4().hex[:8]}")
    try:
        if own.version == "v2":
            # The child needs the memory controller delegated by its parent.
            controls = os.path.join(own.path, "cgroup.subtree_control")
            if "memory" not in _read(controls).split():
                _write(controls, "+memory")
        os.mkdir(path)
    except OSError as err:
        raise RuntimeError(f"cannot create a child memory cgroup under {own.path}: {err}") from err
    try:
        limit_name = "memory.limit_in_bytes" if own.version == "v1" else "memory.max"
        try:
            _write(os.path.join(path, limit_name), str(limit_bytes))
            stored = int(_read(os.path.join(path, limit_name)))
        except (OSError, ValueError) as err:
            raise RuntimeError(f"cannot set {limit_name} in {path}: {err}") from err
        yield ChildCgroup(own.version, path, stored)
    finally:
        _remove(path, own.path)


def _remove(path: str, parent: str) -> None:
    # Anything still inside goes back to the parent; the directory can go once it is empty.
    with contextlib.suppress(OSError):
        for pid in _read(os.path.join(path, "cgroup.procs")).split():
            with contextlib.suppress(OSError):
                _write(os.path.join(parent, "cgroup.procs"), pid)
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)  # the last task's exit is still being accounted
    os.rmdir(path)
