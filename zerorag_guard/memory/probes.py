"""Memory readings: current RSS, and the exact peak of a window from the kernel's high-water mark.

Fast path on Linux: one kept-open fd on ``/proc/self/statm`` read with ``os.pread`` (about
1.5 µs here, against about 12 µs for ``psutil.Process().memory_info()``); psutil elsewhere.

Exact window peaks: writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's ``VmHWM`` to
the current RSS, so ``VmHWM`` read later is the true peak since then, allocation spikes between
samples included. That reset is process-wide and also changes what the kernel reports to everyone
else (``getrusage().ru_maxrss``, ``/usr/bin/time``'s "maximum resident set size"), so the probe
reads the old mark before every reset and keeps the process's lifetime peak itself
(:attr:`MemoryProbe.lifetime_peak_bytes`). A probe trusts the reset only once it has seen one
take effect: it raises the mark 8 MB above RSS on purpose, resets it, and checks that it dropped
(some sandboxes accept the write to ``clear_refs`` and ignore it). Where the kernel refuses or
ignores it, peaks fall back to the largest RSS reading seen in the window.

The C heap: :func:`mallinfo2` asks glibc (2.33 and later) what ``malloc`` holds. Bytes in use are
exact whatever the pages do, where RSS can hide growth that lands on pages already resident (free
heap the allocator could not trim, transparent huge pages).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
import weakref
from typing import Callable, Optional

MB = 1024 * 1024
#: How far above RSS the reset check raises the kernel mark: far above a page's noise, and
#: touched once per probe (about 2 ms).
_CHECK_BYTES = 8 * MB
RssReader = Callable[[], int]
HeapReader = Callable[[], Optional[int]]

_MALLINFO2_FIELDS = (
    "arena",  # bytes the heap (brk and arena heaps) took from the system
    "ordblks",  # free chunks
    "smblks",  # free fastbin chunks
    "hblks",  # mmapped chunks
    "hblkhd",  # bytes in mmapped chunks
    "usmblks",  # always 0
    "fsmblks",  # bytes in free fastbin chunks
    "uordblks",  # bytes in use in the heap
    "fordblks",  # bytes free in the heap
    "keepcost",  # bytes at the top of the heap that malloc_trim can return
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


def _load_mallinfo2() -> Optional[Callable[[], _MallInfo2]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).mallinfo2  # glibc >= 2.33; absent on musl and older glibc
    except (OSError, AttributeError):
        return None
    fn.argtypes = []
    fn.restype = _MallInfo2
    return fn


_mallinfo2 = _load_mallinfo2()


def mallinfo2() -> Optional[dict[str, int]]:
    """glibc's ``mallinfo2()`` figures (bytes and chunk counts, summed over all arenas), or None
    where the C library has no ``mallinfo2``."""
    if _mallinfo2 is None:
        return None
    info = _mallinfo2()
    return {name: int(getattr(info, name)) for name in _MALLINFO2_FIELDS}


def malloc_in_use_bytes() -> Optional[int]:
    """Bytes that ``malloc`` has handed out and not had back (heap plus mmapped chunks), or None
    where the C library cannot say. Python's small objects live in pymalloc arenas, which are
    mmapped directly and not counted here; its larger blocks, C extensions' and native
    libraries' allocations are."""
    info = mallinfo2()
    return None if info is None else info["uordblks"] + info["hblkhd"]


def anonymous_bytes(proc: str = "/proc") -> Optional[int]:
    """Resident memory of this process that is no file's: anonymous pages (heap, stacks,
    private mappings, pymalloc's arenas) and shared memory (``mmap.mmap(-1, n)``, which maps
    shared), ``RssAnon + RssShmem`` in ``/proc/self/status``. None where the kernel does not
    say (before Linux 4.5, not Linux).

    Unlike ``statm``'s RSS it leaves out the pages of mapped files (code run for the first time
    faults them in; the kernel drops them under pressure and reads them again), which no leak
    of this process's own makes."""
    try:
        with open(os.path.join(proc, "self", "status"), "rb") as f:
            data = f.read()
        return _status_bytes(data, b"RssAnon") + _status_bytes(data, b"RssShmem")
    except (OSError, ValueError):
        return None


def _status_bytes(data: bytes, name: bytes) -> int:
    """The figure ``name`` (in kB) of a ``/proc/<pid>/status`` text, in bytes; ValueError when
    the text has no such line."""
    start = data.index(name + b":") + len(name) + 1
    return int(data[start : data.index(b"kB", start)]) * 1024


class PeakWindow:
    """The peak RSS between its opening and :meth:`close` (or now, while open).

    An ``exact`` window reset the kernel's mark when it opened, so it sees every spike; a cheap
    one only sees the readings taken while it is open (its own and the sampler's).
    """

    __slots__ = ("__weakref__", "_peak", "_probe", "closed", "exact")

    def __init__(self, probe: MemoryProbe, start_bytes: int, exact: bool) -> None:
        self._probe = probe
        self._peak = start_bytes
        self.exact = exact
        self.closed = False

    def note(self, rss_bytes: int) -> None:
        """Fold in a reading taken elsewhere (the monitor's sampler does this)."""
        if rss_bytes > self._peak:
            self._peak = rss_bytes

    def peak_bytes(self) -> int:
        """The peak so far: exact where the kernel mark is used, else the largest reading seen."""
        if not self.closed:
            probe = self._probe
            self.note(probe.current_peak_bytes() if self.exact else probe.rss_bytes())
        return self._peak

    def close(self, read: bool = True) -> int:
        """Stop the window and return its peak; ``read=False`` skips the final reading, for a
        caller that has just folded in one of its own with :meth:`note`."""
        peak = self.peak_bytes() if read else self._peak
        self.closed = True
        self._probe._windows.discard(self)
        return peak


class MemoryProbe:
    """Reads this process's memory; every source is injectable so tests can feed exact figures.

    ``rss_reader`` replaces the RSS source entirely (and turns off the kernel peak, whose readings
    would not match the injected ones); ``proc_root`` points the /proc readers at a fake tree.
    """

    def __init__(
        self,
        rss_reader: Optional[RssReader] = None,
        *,
        proc_root: str = "/proc",
        use_kernel_peak: bool = True,
    ) -> None:
        self._proc = os.path.join(proc_root, "self")
        self._lock = threading.Lock()
        self._windows: weakref.WeakSet[PeakWindow] = weakref.WeakSet()
        self._statm_fd: Optional[int] = None
        self._status_fd: Optional[int] = None
        self._page_size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._injected = rss_reader is not None
        self.lifetime_peak_bytes = 0
        if rss_reader is not None:
            self.rss_bytes: RssReader = rss_reader
        elif self._open_statm():
            self.rss_bytes = self._statm_rss
        else:
            self.rss_bytes = self._psutil_rss
        if not self._injected:
            self.lifetime_peak_bytes = _reset_marks_peak
        self.kernel_peak = use_kernel_peak and not self._injected and self._kernel_peak_works()
        _live_probes.add(self)

    @property
    def source(self) -> str:
        """Where RSS comes from: ``injected``, ``statm`` or ``psutil``."""
        if self._injected:
            return "injected"
        return "statm" if self.rss_bytes == self._statm_rss else "psutil"

    def rss_mb(self) -> float:
        return self.rss_bytes() / MB

    # -- fast RSS -------------------------------------------------------------------------------
    def _open_statm(self) -> bool:
        try:
            self._statm_fd = os.open(os.path.join(self._proc, "statm"), os.O_RDONLY)
            self._statm_rss()
        except (OSError, ValueError, IndexError):
            self._statm_fd = None
            return False
        return True

    def _statm_rss(self) -> int:
        # statm: size resident shared text lib data dt, in pages.
        return int(os.pread(self._statm_fd, 128, 0).split()[1]) * self._page_size  # type: ignore[arg-type]

    @staticmethod
    def _psutil_rss() -> int:
        import psutil  # the fallback where there is no statm: loaded when first used

        return int(psutil.Process().memory_info().rss)

    # -- kernel high-water mark -----------------------------------------------------------------
    def _kernel_peak_works(self) -> bool:
        """Whether a reset of the kernel mark takes effect here: after a first reset (which
        keeps the real mark, as every reset does), the mark is raised 8 MB above RSS on
        purpose, reset again, and must then drop. A mark read but never reset would give every
        window the peak of the process's whole life."""
        try:
            self._status_fd = os.open(os.path.join(self._proc, "status"), os.O_RDONLY)
            self.lifetime_peak_bytes = max(self.lifetime_peak_bytes, self._read_hwm())
            self._reset_kernel_mark()
            raised = self._raise_mark()
            self._write_clear_refs()  # not folded: the raised mark is this check's, not the job's
            return 0 < self._read_hwm() <= raised - _CHECK_BYTES // 2
        except (OSError, ValueError):
            return False

    def _raise_mark(self) -> int:
        """The kernel mark after touching, then unmapping, ``_CHECK_BYTES`` of fresh pages."""
        block = mmap.mmap(-1, _CHECK_BYTES)
        try:
            for offset in range(0, _CHECK_BYTES, self._page_size):
                block[offset] = 1
            return self._read_hwm()
        finally:
            block.close()

    def _write_clear_refs(self) -> None:
        with open(os.path.join(self._proc, "clear_refs"), "w") as f:
            f.write("5")

    def _read_hwm(self) -> int:
        return _status_bytes(os.pread(self._status_fd, 4096, 0), b"VmHWM")  # type: ignore[arg-type]

    def _reset_kernel_mark(self) -> None:
        # The mark is process-wide: any probe's reset wipes it for all of them, so hand the old
        # mark to every probe's open windows and lifetime peak first, not just to this one's.
        global _reset_marks_peak
        old = self._read_hwm()
        _reset_marks_peak = max(_reset_marks_peak, old)
        for probe in list(_live_probes):
            if probe.kernel_peak or probe is self:
                probe._fold_old_mark(old)
        self._write_clear_refs()

    def _fold_old_mark(self, old: int) -> None:
        self.lifetime_peak_bytes = max(self.lifetime_peak_bytes, old)
        for window in list(self._windows):
            if window.exact:
                window.note(old)

    def current_peak_bytes(self) -> int:
        """The peak since the last reset: the kernel mark, or a fresh RSS reading without it."""
        if self.kernel_peak:
            try:
                return self._read_hwm()
            except (OSError, ValueError):
                self.kernel_peak = False
        return self.rss_bytes()

    def note(self, rss_bytes: int) -> None:
        """Fold a sampled reading into the open windows that do not have the kernel mark."""
        for window in list(self._windows):
            if not (window.exact and self.kernel_peak):
                window.note(rss_bytes)

    def open_window(self, exact: bool = True, start_bytes: Optional[int] = None) -> PeakWindow:
        """Start measuring a peak. An exact window costs one reset of the kernel mark (~100 µs,
        once a batch); ``exact=False`` costs one RSS reading and sees only sampled readings."""
        with self._lock:
            if exact and self.kernel_peak:
                self._reset_kernel_mark()  # hands the old mark to the open windows first
            start = self.rss_bytes() if start_bytes is None or exact else start_bytes
            window = PeakWindow(self, start, exact)
            self._windows.add(window)
            return window

    def lifetime_peak(self) -> int:
        """The process's peak RSS since start, kept across the resets of the kernel mark."""
        peak = self.current_peak_bytes() if self.kernel_peak else 0
        if not self.kernel_peak:
            try:
                import resource

                scale = 1 if sys.platform == "darwin" else 1024
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            except (ImportError, OSError):  # pragma: no cover - non-Unix
                peak = 0
        self.lifetime_peak_bytes = max(self.lifetime_peak_bytes, peak, self.rss_bytes())
        return self.lifetime_peak_bytes

    def close(self) -> None:
        """Release the kept-open file descriptors."""
        for name in ("_statm_fd", "_status_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _after_fork(self) -> None:
        # A kept-open /proc/self fd still names the parent after fork: reopen it in the child.
        self._lock = threading.Lock()
        self._windows = weakref.WeakSet()
        if self._injected:
            return
        self.close()
        if not self._open_statm():
            self.rss_bytes = self._psutil_rss
        global _reset_marks_peak
        _reset_marks_peak = 0  # the child's own peak starts from what it inherited
        self.lifetime_peak_bytes = 0
        self.kernel_peak = self.kernel_peak and self._kernel_peak_works()


_live_probes: weakref.WeakSet[MemoryProbe] = weakref.WeakSet()
#: The largest mark any probe wiped, so a probe made later still knows the process's peak.
_reset_marks_peak = 0


def _reopen_after_fork() -> None:
    for probe in list(_live_probes):
        probe._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reopen_after_fork)
