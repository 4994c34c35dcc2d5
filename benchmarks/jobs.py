"""Benchmarks that measure a job in a process of its own (peaks, throughput, a model loaded once
per job): the job prints its report as JSON on its last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_job(script: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    """Run ``script`` with ``args`` in this interpreter; its report (the last line, JSON)."""
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
