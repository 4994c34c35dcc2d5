"""The figures the system tests measure, collected per section and written as one JSON file.

Every system test records what it measured (``figures.record("soak", slope_mb_per_min=...)``);
the session prints them at the end and, when ``ZERORAG_RELIABILITY_JSON`` names a file (``make
reliability`` sets it), writes them there for ``tests/system/report.py`` to render as
``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

#: The environment variable naming the JSON file the figures go to.
JSON_ENV = "ZERORAG_RELIABILITY_JSON"


class Figures:
    """Sections of measured figures, in the order the tests recorded them."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, Any]] = {}
        self.started = time.time()

    def record(self, section: str, **values: Any) -> None:
        """Add ``values`` to ``section`` (later values of the same name win)."""
        self.sections.setdefault(section, {}).update(values)

    def to_dict(self, outcomes: Optional[dict[str, str]] = None) -> dict[str, Any]:
        """Everything, with the machine the figures were measured on."""
        return {
            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime()),
            "machine": {
                "kernel": platform.release(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": sys.platform,
            },
            "seconds": round(time.time() - self.started, 1),
            "outcomes": outcomes or {},
            "sections": self.sections,
        }

    def write(self, path: str, outcomes: Optional[dict[str, str]] = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(outcomes), indent=2, default=str) + "\n")

    def lines(self) -> list[str]:
        """One line per figure, for the terminal summary."""
        out = []
        for section, values in self.sections.items():
            shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items() if _plain(v))
            out.append(f"{section}: {shown}")
        return out


def _plain(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
