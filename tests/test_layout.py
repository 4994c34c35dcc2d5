"""The package's layout: one folder per part, each saying its job; the old plugin path; and the
line limit that ``make lint`` checks (``tools/max_lines.py``)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ["memory", "monitor", "budget", "leaks", "control", "pytest", "rag", "integrations", "cli"]


@pytest.mark.parametrize("part", PARTS)
def test_each_folder_says_its_job_and_mirrors_in_the_tests(part: str) -> None:
    module = importlib.import_module(f"zerorag_guard.{part}")
    assert module.__doc__ is not None and len(module.__doc__.split()) >= 20
    assert (ROOT / "tests" / part).is_dir()


def test_the_entry_points_plugin_path_is_the_plugin() -> None:
    from zerorag_guard import pytest_plugin
    from zerorag_guard.pytest import plugin

    public = {name for name in dir(plugin) if not name.startswith("_")}
    assert public <= set(dir(pytest_plugin))
    assert pytest_plugin.pytest_addoption is plugin.pytest_addoption


def max_lines(*args: str) -> subprocess.CompletedProcess[str]:
    tool = ROOT / "tools" / "max_lines.py"
    return subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True)


def test_the_line_limit_names_a_module_over_it(tmp_path: Path) -> None:
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "short.py").write_text("x = 1\n" * 400)
    (tmp_path / "part" / "long.py").write_text("x = 1\n" * 401)
    done = max_lines("400", str(tmp_path))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{tmp_path}/part/long.py: 401 lines, over the limit of 400"
    ]


def test_no_module_of_the_package_passes_400_lines() -> None:
    done = max_lines("400", str(ROOT / "zerorag_guard"))
    assert done.returncode == 0, done.stdout
