"""The ``zerorag-guard`` command and the guide's forms, run as a user runs them: in subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEALTH_KEYS = {"health_score", "memory_usage", "health_issues"}
TIMEOUT = 90
MB = 1 << 20


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR for the subprocesses, so ``ps`` sees only this test's jobs."""
    path = Path(tempfile.mkdtemp(prefix="zg-", dir="/tmp"))
    yield path
    leftovers = sorted(p.name for p in path.glob("zerorag-guard/*.sock"))
    shutil.rmtree(path, ignore_errors=True)
    assert leftovers == [], f"socket files left behind: {leftovers}"


def _env(runtime_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ZERORAG_GUARD_", "MEMORY_", "GC_INTERVAL", "BATCH_SIZE"))
    }
    env.update(XDG_RUNTIME_DIR=str(runtime_dir), COLUMNS="200", PYTHONUNBUFFERED="1")
    return env


def run(
    runtime_dir: Path, *args: str, script: str | None = None, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m zerorag_guard ARGS`` (or a guide script, or ``-c CODE``) in a subprocess."""
    if code is not None:
        argv = [sys.executable, "-c", code, *args]
    elif script is not None:
        argv = [sys.executable, str(ROOT / script), *args]
    else:
        argv = [sys.executable, "-m", "zerorag_guard", *args]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(runtime_dir),
        cwd=runtime_dir,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "error:" in lines[0]
    return lines[0]


def normalized(text: str) -> str:
    """Output with pids and measured figures blanked, to compare two runs."""
    text = re.sub(r"pid \d+", "pid N", text)
    return re.sub(r"\d[\d,]*\.\d+", "X", text)


# -- each command prints what it promises --------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "promised"),
    [
        (
            ["--help"],
            ["report", "analyze", "cleanup", "monitor", "optimize", "debug", "configure", "ps"],
        ),
        (
            ["report"],
            ["health score", "RSS", "main threshold", "effective limit", "Group", "Health issues"],
        ),
        (
            ["analyze"],
            ["effective limit", "Limit candidates", "host", "Group", "Thresholds", "recommended"],
        ),
        (["cleanup"], ["Standard cleanup", "RSS", "objects collected"]),
        (["cleanup", "--aggressive"], ["Aggressive cleanup", "malloc_trim"]),
        (
            ["optimize", "800"],
            [
                "MEMORY_THRESHOLD_MB=600",
                "MEMORY_CRITICAL_THRESHOLD_MB=720",
                "BATCH_SIZE=45",
                "GC_INTERVAL_SECONDS=120",
            ],
        ),
        (
            ["debug", "--trace-seconds", "0.2", "--top", "5"],
            [
                "Top types (pympler)",
                "Top allocation sites (tracemalloc)",
                "Garbage collector",
                "cgroup",
                "mallinfo2",
                "smaps_rollup",
                "Monitor",
            ],
        ),
        (["ps"], ["no guarded processes"]),
    ],
)
def test_command_prints_what_it_promises(
    runtime_dir: Path, args: list[str], promised: list[str]
) -> None:
    out = ok(run(runtime_dir, *args))
    for text in promised:
        assert text in out, f"{text!r} missing from {args}:\n{out}"


@pytest.mark.parametrize(
    "args",
    [
        ["report"],
        ["analyze"],
        ["cleanup", "--aggressive"],
        ["optimize", "800"],
        ["debug", "--trace-seconds", "0", "--top", "3"],
        ["monitor", "0.5", "--interval", "0.2"],
    ],
)
def test_json_output_parses_and_carries_the_health_keys(runtime_dir: Path, args: list[str]) -> None:
    data = json.loads(ok(run(runtime_dir, *args, "--json")))
    assert set(data) >= HEALTH_KEYS
    assert data["memory_usage"]["rss_mb"] > 0 and 0 <= data["health_score"] <= 100
    assert isinstance(data["health_issues"], list)


def test_optimize_says_when_the_target_is_below_what_the_process_needs(runtime_dir: Path) -> None:
    proc = run(runtime_dir, "optimize", "5", "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["feasible"] is False and "below what the process already needs" in data["notes"][0]


def test_plain_text_without_rich(runtime_dir: Path) -> None:
    code = (
        "import sys; sys.modules['rich'] = None; from zerorag_guard.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    out = ok(run(runtime_dir, "analyze", code=code))
    assert "effective limit" in out and "source" in out
    assert not set("│┃━") & set(out)


def test_plot_without_matplotlib_is_a_one_line_error(runtime_dir: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; from zerorag_guard.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    proc = run(runtime_dir, "monitor", "1", "--plot", "x.png", code=code)
    assert "needs matplotlib" in one_line_error(proc, 1)
    assert not (runtime_dir / "x.png").exists()


def test_ps_removes_sockets_of_dead_processes(runtime_dir: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    directory = runtime_dir / "zerorag-guard"
    directory.mkdir(mode=0o700)
    (directory / f"{dead}.sock").touch()
    assert "no guarded processes" in ok(run(runtime_dir, "ps"))
    assert not (directory / f"{dead}.sock").exists()


# -- the guide's forms ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "command"),
    [
        (["--report"], ["report"]),
        (["--analyze"], ["analyze"]),
        (["--optimize", "800"], ["optimize", "800"]),
    ],
)
def test_guide_form_gives_the_same_output(
    runtime_dir: Path, flags: list[str], command: list[str]
) -> None:
    guide = ok(run(runtime_dir, *flags, script="scripts/optimize_memory.py"))
    direct = ok(run(runtime_dir, *command))
    assert normalized(guide) == normalized(direct)


@pytest.mark.parametrize(
    ("flags", "promised"),
    [
        (["--cleanup"], "Standard cleanup"),
        (["--aggressive"], "Aggressive cleanup"),
        (["--cleanup", "--aggressive"], "Aggressive cleanup"),
        (["--monitor", "1"], "Monitor summary"),
    ],
)
def test_guide_cleanup_and_monitor_forms(
    runtime_dir: Path, flags: list[str], promised: str
) -> None:
    assert promised in ok(run(runtime_dir, *flags, script="scripts/optimize_memory.py"))


def test_debug_memory_usage_script(runtime_dir: Path) -> None:
    data = json.loads(ok(run(runtime_dir, "--json", script="debug_memory_usage.py")))
    assert set(data) >= HEALTH_KEYS
    assert data["top_types"] and data["gc"]["thresholds"] and "sites" in data["tracemalloc"]
    assert data["malloc"]["status"]["VmRSS_mb"] > 0


# -- bad usage: one line, exit 2; no such guarded process: exit 3 --------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["monitor", "-5"],
        ["monitor", "0"],
        ["monitor", "1", "--interval", "-1"],
        ["optimize", "0"],
        ["optimize", "lots"],
        ["report", "--pid", "0"],
        ["report", "--pid", "abc"],
        ["configure", "--pid", "1", "NO_SUCH_SETTING=1"],
        ["configure", "--pid", "1", "threshold_mb"],
        ["configure", "MEMORY_THRESHOLD_MB=5"],
        ["debug", "--trace-seconds", "99"],
        ["frobnicate"],
    ],
)
def test_bad_usage_is_a_one_line_error_exit_2(runtime_dir: Path, args: list[str]) -> None:
    line = one_line_error(run(runtime_dir, *args), 2)
    assert line.startswith("zerorag-guard")


@pytest.mark.parametrize(
    "flags", [["--monitor", "-5"], ["--optimize", "0"], ["--report", "--analyze"]]
)
def test_guide_bad_usage_exit_2(runtime_dir: Path, flags: list[str]) -> None:
    line = one_line_error(run(runtime_dir, *flags, script="scripts/optimize_memory.py"), 2)
    assert line.startswith("optimize_memory.py: error:")


@pytest.mark.parametrize(
    "args",
    [
        ["report"],
        ["analyze"],
        ["cleanup"],
        ["monitor", "1"],
        ["debug"],
        ["configure", "BATCH_SIZE=10"],
    ],
)
def test_a_pid_with_no_process_is_bad_usage_and_an_unguarded_process_exit_3(
    runtime_dir: Path, args: list[str]
) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    line = one_line_error(run(runtime_dir, *args, "--pid", dead), 2)
    assert f"no running process with pid {dead}" in line
    # pid 1 runs (init), but no guarded process answers for it.
    line = one_line_error(run(runtime_dir, *args, "--pid", "1"), 3)
    assert "no guarded process with pid 1" in line


# -- a real guarded job, reached from other processes --------------------------------------------
WORKER = """
import gc, os, sys
gc.disable()  # keep the cyclic garbage until a cleanup collects it
import zerorag_guard
zerorag_guard.get_monitor()
kept = [bytearray(b"k") * (1 << 20) for _ in range(20)]
class Node:
    pass
for _ in range(180):  # 180 MB reachable only through reference cycles
    a, b = Node(), Node()
    a.other, b.other = b, a
    a.payload = bytearray(b"x") * (1 << 20)
del a, b
print("ready", os.getpid(), flush=True)
sys.stdin.read()
"""


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def worker(runtime_dir: Path) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, "guarded-worker-marker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(runtime_dir),
        cwd=runtime_dir,
    )
    watchdog = threading.Timer(TIMEOUT, proc.kill)  # a hung worker must not hang the suite
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the worker's first line; it exits on its own if broken
        assert line.startswith("ready"), line
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        watchdog.cancel()


def remote(runtime_dir: Path, pid: int, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(run(runtime_dir, *args, "--pid", str(pid), "--json")))
    return data


@pytest.mark.slow
def test_reaching_a_running_guarded_job(runtime_dir: Path, worker: int) -> None:
    report = remote(runtime_dir, worker, "report")
    kernel = vm_rss_mb(worker)
    assert report["pid"] == worker
    assert abs(report["memory_usage"]["rss_mb"] - kernel) <= 0.05 * kernel
    assert kernel > 180  # it really holds the memory

    listed = json.loads(ok(run(runtime_dir, "ps", "--json")))
    assert [(r["pid"], "guarded-worker-marker" in r["command"]) for r in listed] == [(worker, True)]
    assert "guarded-worker-marker" in ok(run(runtime_dir, "ps"))

    before = vm_rss_mb(worker)
    cleaned = remote(runtime_dir, worker, "cleanup", "--aggressive")
    after = vm_rss_mb(worker)
    assert cleaned["cleanup"]["strategy"] == "aggressive"
    assert cleaned["cleanup"]["collected"] >= 360
    assert after < before - 100, (before, after)
    assert cleaned["memory_usage"]["rss_mb"] < before - 100

    low = max(5, int(after // 2))
    changed = remote(
        runtime_dir,
        worker,
        "configure",
        f"MEMORY_THRESHOLD_MB={low}",
        f"critical_threshold_mb={low + 5}",
    )
    assert changed["config"]["threshold_mb"] == low
    health = remote(runtime_dir, worker, "report")
    assert health["memory_usage"]["threshold_mb"] == low
    assert health["memory_usage"]["level"] == "CRITICAL"
    assert any("CRITICAL" in issue for issue in health["health_issues"])
    assert health["health_score"] < report["health_score"]
    refused = run(runtime_dir, "configure", "--pid", str(worker), "MEMORY_THRESHOLD_MB=5000")
    assert "MEMORY_CRITICAL_THRESHOLD_MB" in one_line_error(refused, 2)

    analysis = remote(runtime_dir, worker, "analyze")
    assert analysis["thresholds"]["main_mb"] == low and analysis["effective_limit"]["candidates"]
    watched = remote(runtime_dir, worker, "monitor", "2", "--interval", "0.1")  # up to 20
    print(f"\nmonitor 2 s at 0.1 s: {watched['summary']['samples']} samples")
    assert watched["summary"]["samples"] >= 3
    assert {s["level"] for s in watched["samples"]} == {"CRITICAL"}
    debug = remote(runtime_dir, worker, "debug", "--trace-seconds", "0.2", "--top", "5")
    assert debug["pid"] == worker and debug["monitor"]["alerts"]
    assert any(t["type"] == "bytearray" for t in debug["top_types"])


# A job whose loop is inside its fifth batch, each item holding 1 MB until its batch ends.
RESERVING_JOB = """
import os, sys
from zerorag_guard import memory_budget
with memory_budget(2000, batch_size=8) as budget:
    for i, batch in enumerate(budget.chunks(range(1000))):
        held = [bytearray(1 << 20) for _ in batch]
        if i == 4:
            print("ready", os.getpid(), len(batch), flush=True)
            sys.stdin.read()
            break
"""


def test_report_analyze_and_ps_show_who_holds_reservations(runtime_dir: Path) -> None:
    env = {**_env(runtime_dir), "ZERORAG_GUARD_SHARE_NODE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", RESERVING_JOB],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=runtime_dir,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["ready"], line
        pid, size = int(line[1]), int(line[2])
        group = remote(runtime_dir, pid, "report")["group"]
        (loop,) = [r for r in group["reservations"] if r["pid"] == pid]
        # The fifth batch's reservation: its items at the ~1 MB each measured on the first four.
        assert loop["ledger"] == "node" and 0.7 * size * MB <= loop["bytes"] <= 1.5 * size * MB
        assert group["processes_reserving"] == 1
        assert remote(runtime_dir, pid, "analyze")["group"]["reservations"] == [loop]
        (listed,) = json.loads(ok(run(runtime_dir, "ps", "--json")))
        assert listed["reserved_mb"] == round(loop["bytes"] / MB, 1)
        text = ok(run(runtime_dir, "report", "--pid", str(pid)))
        assert "Loops holding reservations" in text and "node" in text
        assert "RESERVED" in ok(run(runtime_dir, "ps"))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_monitor_writes_a_png_timeline_and_csv(runtime_dir: Path) -> None:
    png, csv = runtime_dir / "out.png", runtime_dir / "out.csv"
    out = ok(run(runtime_dir, "monitor", "5", "--plot", str(png), "--csv", str(csv)))
    assert "Monitor summary" in out and f"plot written to {png}" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1000, 500)
    assert len(data) > 10_000
    rows = csv.read_text().splitlines()
    assert rows[0] == "seconds,rss_mb,level" and len(rows) > 10


def test_report_shows_open_alert_episodes_once_with_their_repeats(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from budget_helpers import Steady, monitor_with

    from zerorag_guard.cli import report

    reader = Steady(1210)
    monitor = monitor_with(reader)  # 1000 / 1200 MB
    for mb in (1210, 1100, 1250, 1100, 1230):  # CRITICAL entered once, re-entered twice
        reader.mb = mb
        monitor.sample()
    health = monitor.get_health_status()
    report.render(health, "test")
    text = capsys.readouterr().out
    assert "alerts counted on open episodes instead of raised again: critical 2" in text
    assert "Open alert episodes" in text
    (row,) = [line for line in text.splitlines() if "holds" in line]
    assert [cell.strip() for cell in re.split(r"[│|]", row) if cell.strip()] == [
        "critical",
        "memory",
        "CRITICAL",
        "2",
        "1,250.0 MB",
        "holds",
    ]
