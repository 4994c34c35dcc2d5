"""The effective memory limit: the smallest of host RAM, the process's own cgroup and its rlimits.

A container's limit is a cgroup limit on the cgroup the process is in, which is rarely the root
of the hierarchy; so the path is resolved from ``/proc/self/cgroup`` and mapped onto the mount
point found in ``/proc/self/mountinfo``, and every ancestor up to the mount is read too (a
parent's limit binds its children). v1 reads ``memory.limit_in_bytes``; v2 ``memory.max`` and
``memory.high``. ``max`` and v1's sentinel (``PAGE_COUNTER_MAX`` pages, 9223372036854771712 with
4 KiB pages) mean "no limit". Roots are injectable so tests use fake trees: ``proc_root`` stands
for ``/proc`` and ``sys_root`` is the prefix under which the mount points named in mountinfo
(``/sys/fs/cgroup/...``) are looked up.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

#: Anything at or above this is the kernel's way of saying "unlimited" (v1 rounds LONG_MAX
#: down to a page multiple, so compare with a margin rather than for equality).
UNLIMITED_FLOOR = 1 << 60
#: A guard's default ceiling never passes this share of the effective (container) limit, so it
#: acts before the kernel's OOM killer does.
EFFECTIVE_LIMIT_SHARE = 0.9


@dataclass(frozen=True)
class Limit:
    """One candidate limit: ``bytes`` and where it came from (``host``, ``cgroup v1``, ...)."""

    bytes: int
    source: str
    detail: str = ""


@dataclass(frozen=True)
class EffectiveLimit:
    """The binding limit and every candidate considered, for ``analyze`` to show."""

    bytes: int
    source: str
    detail: str
    candidates: tuple[Limit, ...] = field(default_factory=tuple)

    @property
    def mb(self) -> float:
        return self.bytes / (1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "mb": round(self.mb, 1),
            "source": self.source,
            "detail": self.detail,
            "candidates": [asdict(c) for c in self.candidates],
        }


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _parse_limit(text: Optional[str]) -> Optional[int]:
    if text is None or text == "max" or text == "":
        return None
    try:
        value = int(text.split()[0])
    except ValueError:
        return None
    return value if 0 < value < UNLIMITED_FLOOR else None


def _mounts(proc_root: str) -> list[tuple[str, str, str, str]]:
    """(root, mount point, fstype, super options) of every cgroup mount."""
    out = []
    for line in (_read(os.path.join(proc_root, "self", "mountinfo")) or "").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            out.append((fields[3], fields[4], tail[0], tail[2]))
    return out


def _cgroup_dirs(proc_root: str, sys_root: str) -> list[tuple[str, str, str]]:
    """(version, directory of the process's own cgroup, mount point) for the memory controller."""
    found = []
    mounts = _mounts(proc_root)
    for line in (_read(os.path.join(proc_root, "self", "cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            version, wanted = "v2", [m for m in mounts if m[2] == "cgroup2"]
        elif "memory" in controllers.split(","):
            version = "v1"
            wanted = [m for m in mounts if m[2] == "cgroup" and "memory" in m[3].split(",")]
        else:
            continue
        for root, mount_point, _, _ in wanted:
            # Inside a container the mount's root is the container's own cgroup: strip it.
            rel = path
            if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
                rel = path[len(root.rstrip("/")) :]
            mount = sys_root.rstrip("/") + mount_point
            found.append((version, os.path.normpath(mount + "/" + rel.lstrip("/")), mount))
    return found


def cgroup_limits(proc_root: str = "/proc", sys_root: str = "/") -> list[Limit]:
    """Every memory limit on the process's own cgroup and its ancestors, v1 and v2."""
    limits = []
    for version, directory, mount in _cgroup_dirs(proc_root, sys_root):
        names = ("memory.limit_in_bytes",) if version == "v1" else ("memory.max", "memory.high")
        current = directory
        while True:
            for name in names:
                value = _parse_limit(_read(os.path.join(current, name)))
                if value is not None:
                    limits.append(Limit(value, f"cgroup {version}", os.path.join(current, name)))
            if current == mount or len(current) <= len(mount):
                break
            current = os.path.dirname(current)
    return limits


def cgroup_usage(
    version: str, directory: str, read: Callable[[str], Optional[str]] = _read
) -> Optional[int]:
    """Memory charged to one cgroup (page cache included): v1 ``memory.usage_in_bytes``, v2
    ``memory.current``; None where unreadable."""
    name = "memory.usage_in_bytes" if version == "v1" else "memory.current"
    return _parse_limit(read(os.path.join(directory, name)))


def cgroup_usage_bytes(proc_root: str = "/proc", sys_root: str = "/") -> Optional[int]:
    """Memory charged to the process's own cgroup (page cache included), where readable."""
    for version, directory, _ in _cgroup_dirs(proc_root, sys_root):
        value = cgroup_usage(version, directory)
        if value is not None:
            return value
    return None


def _host_total() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not POSIX, or not told
        import psutil

        return int(psutil.virtual_memory().total)


def rlimits(getrlimit: Optional[Callable[[int], tuple[int, int]]] = None) -> list[Limit]:
    """``RLIMIT_AS`` and ``RLIMIT_RSS`` soft limits where set (RLIMIT_RSS is not enforced by
    Linux, but a set value states the operator's intent)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - non-Unix
        return []
    get = getrlimit or resource.getrlimit
    out = []
    for name in ("RLIMIT_AS", "RLIMIT_RSS"):
        number = getattr(resource, name, None)
        if number is None:
            continue
        soft, _ = get(number)
        if soft not in (resource.RLIM_INFINITY, -1) and 0 < soft < UNLIMITED_FLOOR:
            out.append(Limit(int(soft), "rlimit", name))
    return out


def effective_limit(
    proc_root: str = "/proc",
    sys_root: str = "/",
    host_total: Optional[Callable[[], int]] = None,
    getrlimit: Optional[Callable[[int], tuple[int, int]]] = None,
) -> EffectiveLimit:
    """The smallest limit that applies to this process, with every candidate."""
    candidates = [Limit((host_total or _host_total)(), "host", "physical memory")]
    candidates += cgroup_limits(proc_root, sys_root)
    candidates += rlimits(getrlimit)
    best = min(candidates, key=lambda c: c.bytes)
    return EffectiveLimit(best.bytes, best.source, best.detail, tuple(candidates))
