"""Soak: the guard must not become the leak. A guarded ingestion loop runs for ``--soak-seconds``
(60 in ``make test``, 120 in ``make reliability``) in a subprocess with the monitor sampling
every 20 ms, thresholds just above the loop's baseline (alerts and light/standard/aggressive
cleanups all the time), listeners, a registered cache and the control socket, which this test
queries every 2 s.

After the warm-up: RSS has no trend (least-squares slope over readings taken every 0.5 s at the
same point of the loop, just after ``malloc_trim(0)`` so glibc's unreturned free heap top does not
flip them between two levels, and over what is left after each aggressive cleanup), Python's
allocated blocks have none either, the bounded lists stay within their sizes, and threads and
file descriptors are the same at the end as after the warm-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from system_figures import Figures

from zerorag_guard.control.client import ControlClient, ControlError

pytestmark = [pytest.mark.system, pytest.mark.slow]

JOB = Path(__file__).resolve().parent / "soak_job.py"
#: The bound on the RSS trend, in MB per minute: far below what the loop moves through memory
#: (tens of MB a second), so any per-round leak shows.
MAX_SLOPE_MB_PER_MIN = 1.0
#: The bound on the trend of Python's allocated blocks per minute: a leak of one object a round
#: (about 150 rounds a second) would be ~9000.
MAX_BLOCK_SLOPE_PER_MIN = 3000.0
QUERY_EVERY = 2.0
QUERIES = ("ping", "health", "history")


def test_soak_holds_steady(
    soak_seconds: float, socket_home: Path, tmp_path: Path, figures: Figures
) -> None:
    stderr_path = tmp_path / "soak.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(JOB), "--seconds", str(soak_seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: list[str] = []
    # The job prints one line, then waits for its input to close: read just that line.
    reader = threading.Thread(
        target=lambda: lines.append(proc.stdout.readline() if proc.stdout else ""), daemon=True
    )
    reader.start()
    client = ControlClient(proc.pid, directory=socket_home / "zerorag-guard", timeout=10.0)
    answered = failed_after_first = 0
    failures: list[str] = []
    deadline = time.monotonic() + soak_seconds + 120
    try:
        n = 0
        while not lines and proc.poll() is None and time.monotonic() < deadline:
            try:
                reply = client.request(QUERIES[n % len(QUERIES)])
                assert reply["ok"] and reply["pid"] == proc.pid
                answered += 1
            except (ControlError, OSError) as exc:
                if answered and not lines:
                    failed_after_first += 1
                    failures.append(f"{type(exc).__name__}: {exc}")
            n += 1
            time.sleep(QUERY_EVERY if answered else 0.1)
        reader.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert lines and lines[-1].strip(), (
        f"the soak job printed nothing: {stderr_path.read_text()[-3000:]}"
    )
    result: dict[str, Any] = json.loads(lines[-1])

    shown = {k: v for k, v in result.items() if not k.startswith("thread_names")}
    figures.record(
        "soak", **shown, control_queries_answered=answered, control_failures=failed_after_first
    )
    print(json.dumps(shown, indent=1))

    assert proc.returncode == 0, stderr_path.read_text()[-3000:]
    assert result["items_lost"] == 0 and result["items_processed"] == result["items_fed"] > 0
    assert result["rss_points"] >= 10 and result["kept_points"] >= 3
    # No trend in RSS or in Python's allocated blocks after the warm-up.
    assert abs(result["slope_mb_per_min"]) < MAX_SLOPE_MB_PER_MIN, shown
    assert abs(result["kept_slope_mb_per_min"]) < MAX_SLOPE_MB_PER_MIN, shown
    assert abs(result["blocks_slope_per_min"]) < MAX_BLOCK_SLOPE_PER_MIN, shown
    # Bounded lists stay within their sizes.
    assert result["history_len"] <= result["history_size"]
    assert result["alerts_len"] <= result["alert_history_size"]
    assert result["operations_len"] <= result["operation_history_size"]
    # No thread or file descriptor leaks.
    assert result["threads_end"] == result["threads_after_warmup"], result
    assert result["thread_names_end"] == result["thread_names_after_warmup"], result
    assert result["fds_end"] == result["fds_after_warmup"], shown
    # Everything was active: the sampler, alerts to the listeners, all three cleanups, the socket.
    assert result["sampler_alive"]
    assert result["alerts_by_kind"].get("memory", 0) > 0
    assert result["alerts_by_kind"].get("recovered", 0) > 0
    for strategy in ("light", "standard", "aggressive"):
        assert result["cleanups"][strategy]["count"] > 0, strategy
    assert answered >= max(3, int(soak_seconds / QUERY_EVERY / 2)), answered
    assert failed_after_first == 0, failures
    assert result["control_served"] >= answered
