"""Probes against the real kernel: statm RSS, psutil fallback, high-water-mark windows, the
lifetime peak, and fork."""

from __future__ import annotations

import gc
import mmap
import resource
from pathlib import Path
from typing import Any

import psutil
import pytest
from fork_helpers import in_forked_child

from zerorag_guard import get_monitor
from zerorag_guard.memory.probes import MB, MemoryProbe, anonymous_bytes


def vm_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def spike(mb: int) -> None:
    """Make RSS rise by ``mb`` and fall back: the pages are written, then unmapped."""
    block = b"\x01" * (mb * MB)
    assert len(block) == mb * MB
    del block


@pytest.fixture
def kernel_probe() -> MemoryProbe:
    probe = MemoryProbe()
    if not probe.kernel_peak:
        pytest.skip("the kernel refuses /proc/self/clear_refs here: no exact window peaks")
    return probe


def test_statm_rss_agrees_with_vmrss() -> None:
    probe = MemoryProbe()
    assert probe.source == "statm"
    block = b"\x01" * (50 * MB)  # a figure large enough that a few percent is meaningful
    fast, slow = probe.rss_bytes(), vm_rss()
    assert fast == pytest.approx(slow, rel=0.03)
    assert probe.rss_mb() >= 50
    del block


def test_anonymous_bytes_counts_written_pages_and_not_a_mapped_file(tmp_path: Path) -> None:
    # Written a megabyte at a time: a 16 MB buffer freed may stay resident in the heap (glibc
    # serves it from there once a large block was freed before) and count as anonymous memory.
    chunk = b"\x02" * MB
    data = tmp_path / "data"
    with open(data, "wb") as out:
        for _ in range(16):
            out.write(chunk)
    probe = MemoryProbe(use_kernel_peak=False)
    before = anonymous_bytes()
    assert before is not None, "no /proc/self/smaps_rollup on this kernel"
    with open(data, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        rss = probe.rss_bytes()
        checksum = sum(mapped[i] for i in range(0, len(mapped), 4096))  # every page read
        assert checksum == 2 * 4096
        file_rss, file_anon = probe.rss_bytes() - rss, anonymous_bytes()
    assert file_rss >= 15 * MB  # statm's RSS took the file's pages...
    assert file_anon is not None and file_anon - before < 4 * MB  # ...the anonymous count did not
    # Private anonymous pages, then shared ones (mmap.mmap(-1, n) maps shared memory).
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    with mmap.mmap(-1, 16 * MB, flags=private) as anon, mmap.mmap(-1, 16 * MB) as shared:
        for offset in range(0, 16 * MB, MB):
            anon[offset : offset + MB] = chunk
        written = anonymous_bytes()
        for offset in range(0, 16 * MB, MB):
            shared[offset : offset + MB] = chunk
        both = anonymous_bytes()
    assert written is not None and written - file_anon >= 15 * MB
    assert both is not None and both - written >= 15 * MB
    probe.close()


def test_anonymous_bytes_reads_status_and_is_none_without_it(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    status = tmp_path / "self" / "status"
    status.write_text(
        "Name:\tpython\nVmRSS:\t  102132 kB\nRssAnon:\t   71984 kB\n"
        "RssFile:\t   30124 kB\nRssShmem:\t      24 kB\n"
    )
    assert anonymous_bytes(str(tmp_path)) == (71984 + 24) * 1024
    status.write_text("Name:\tpython\nVmRSS:\t  102132 kB\n")  # a kernel before 4.5
    assert anonymous_bytes(str(tmp_path)) is None
    assert anonymous_bytes(str(tmp_path / "nowhere")) is None


def test_psutil_fallback_where_there_is_no_statm(tmp_path: Path) -> None:
    probe = MemoryProbe(proc_root=str(tmp_path / "no-proc"))
    assert probe.source == "psutil"
    assert not probe.kernel_peak
    assert probe.rss_bytes() == pytest.approx(psutil.Process().memory_info().rss, rel=0.05)
    # Without the kernel mark a window keeps the largest reading it was shown.
    window = probe.open_window()
    probe.note(probe.rss_bytes() + 300 * MB)
    assert window.close() >= probe.rss_bytes() + 290 * MB


def test_injected_reader_turns_off_the_kernel_peak() -> None:
    probe = MemoryProbe(rss_reader=lambda: 123 * MB)
    assert (probe.source, probe.kernel_peak, probe.rss_mb()) == ("injected", False, 123.0)


def test_peak_window_catches_a_spike_between_samples(kernel_probe: MemoryProbe) -> None:
    window = kernel_probe.open_window()
    start = kernel_probe.rss_bytes()
    spike(200)
    now = kernel_probe.rss_bytes()
    peak = window.close()
    print(f"window: start {start / MB:.1f} MB, peak {peak / MB:.1f} MB, now {now / MB:.1f} MB")
    assert now < start + 50 * MB  # the spike is gone: no sample could have seen it
    assert peak - start >= 190 * MB


def test_overlapping_windows_both_see_their_spikes(kernel_probe: MemoryProbe) -> None:
    first = kernel_probe.open_window()
    base = kernel_probe.rss_bytes()
    spike(200)  # before the second window's reset of the kernel mark
    second = kernel_probe.open_window()
    assert second.peak_bytes() < base + 100 * MB  # the second window opened after it
    spike(120)  # inside both windows
    second_peak = second.close()
    first_peak = first.close()
    assert first_peak - base >= 190 * MB  # kept though the mark was reset under it
    assert 110 * MB <= second_peak - base < 190 * MB


def test_lifetime_peak_survives_resets_and_is_in_health(kernel_probe: MemoryProbe) -> None:
    monitor = get_monitor()
    probe = monitor.probe
    if not probe.kernel_peak:
        pytest.skip("the monitor's probe has no kernel peak")
    base = probe.rss_bytes()
    spike(250)
    probe.open_window().close()  # resets VmHWM, and with it ru_maxrss
    kernel_probe.open_window().close()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    lifetime = probe.lifetime_peak()
    health = monitor.get_health_status()
    print(
        f"base {base / MB:.1f} MB; ru_maxrss after reset {maxrss / MB:.1f} MB; "
        f"lifetime peak {lifetime / MB:.1f} MB; health {health['memory_usage']}"
    )
    assert lifetime - base >= 240 * MB
    assert health["memory_usage"]["lifetime_peak_mb"] >= (base + 240 * MB) / MB
    # The side effect the probe makes up for: the kernel's own figure forgot the spike.
    assert maxrss < lifetime - 200 * MB


@pytest.mark.system
def test_fork_reopens_statm_in_the_child() -> None:
    probe = MemoryProbe()
    parent_rss = probe.rss_bytes()

    def in_child() -> dict[str, Any]:
        before = probe.rss_bytes()
        block = b"\x01" * (100 * MB)
        after = probe.rss_bytes()
        return {
            "before": before,
            "after": after,
            "vmrss": vm_rss(),
            "source": probe.source,
            "n": len(block),
        }

    child = in_forked_child(in_child)
    assert child["source"] == "statm"
    assert child["after"] - child["before"] >= 95 * MB
    assert child["after"] == pytest.approx(child["vmrss"], rel=0.03)
    gc.collect()
    assert probe.rss_bytes() < parent_rss + 50 * MB  # the parent's reading is its own


def test_another_probes_reset_does_not_lose_a_window_or_the_lifetime_peak(
    kernel_probe: MemoryProbe,
) -> None:
    # The kernel mark is process-wide: a second probe resetting it must not wipe the first's.
    other = MemoryProbe()
    window = kernel_probe.open_window()
    base = kernel_probe.rss_bytes()
    spike(200)
    other.open_window().close()
    assert window.close() - base >= 190 * MB
    later = MemoryProbe()  # made after the reset: still knows the process's peak
    for probe in (kernel_probe, other, later):
        assert probe.lifetime_peak() - base >= 190 * MB


def test_a_cheap_window_sees_sampled_readings_but_not_an_old_kernel_mark() -> None:
    probe = MemoryProbe()
    if not probe.kernel_peak:
        pytest.skip("the kernel's high-water mark cannot be reset here")
    spike = bytearray(150 * MB)
    spike[::4096] = b"x" * len(spike[::4096])  # touch every page: resident
    del spike
    cheap = probe.open_window(exact=False)
    exact = probe.open_window()  # resets the mark: the old one (with the spike) is handed over
    start = probe.rss_bytes()
    assert cheap.peak_bytes() < start + 50 * MB  # the spike before it opened is not its own
    probe.note(start + 70 * MB)  # a sampled reading reaches the cheap window
    assert cheap.close() >= start + 70 * MB
    assert exact.close() < start + 50 * MB  # the exact window reads the kernel, not notes


def _fake_proc(root: Path, hwm_kb: int) -> None:
    own = root / "self"
    own.mkdir(parents=True)
    (own / "statm").write_text("25600 12800 1000 100 0 20000 0\n")
    (own / "status").write_text(f"Name:\tpython\nVmHWM:\t{hwm_kb} kB\nVmRSS:\t51200 kB\n")
    (own / "clear_refs").write_text("")


def test_a_mark_that_a_reset_does_not_lower_is_not_trusted(tmp_path: Path) -> None:
    # clear_refs takes the write, VmHWM never moves (as in a sandbox that ignores the reset):
    # the mark is readable and positive, but windows must not use it.
    _fake_proc(tmp_path, hwm_kb=900_000)
    probe = MemoryProbe(proc_root=str(tmp_path))
    assert (tmp_path / "self" / "clear_refs").read_text() == "5"  # the reset was tried
    assert probe.source == "statm" and probe.rss_bytes() == 12800 * probe._page_size
    assert not probe.kernel_peak
    window = probe.open_window()
    probe.note(probe.rss_bytes() + 10 * MB)
    assert window.close() == probe.rss_bytes() + 10 * MB  # sampled, not the stale 900 MB mark
    assert probe.lifetime_peak_bytes >= 900_000 * 1024  # the old mark is still kept


def test_the_real_kernel_mark_drops_after_a_reset(kernel_probe: MemoryProbe) -> None:
    block = bytearray(64 * MB)  # zero-filled by calloc: touch one byte a page to make it resident
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    high = kernel_probe.current_peak_bytes()
    del block
    window = kernel_probe.open_window()  # resets the mark below the 64 MB that were freed
    assert window.close() < high - 32 * MB
    assert kernel_probe.lifetime_peak_bytes >= high
