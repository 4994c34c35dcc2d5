"""Fail when a module of the package passes the line limit of the style guide (400 lines).

Run by ``make lint``: ``python tools/max_lines.py [LIMIT] [FOLDER]`` (defaults 400 and
``zerorag_guard``). Prints each module over the limit with its length, and exits 1 if there is one.
"""

from __future__ import annotations

import sys
from pathlib import Path


def over(folder: Path, limit: int) -> list[tuple[Path, int]]:
    """The modules under ``folder`` longer than ``limit`` lines, longest first."""
    lengths = [(path, len(path.read_text().splitlines())) for path in folder.rglob("*.py")]
    return sorted(((p, n) for p, n in lengths if n > limit), key=lambda item: -item[1])


def main(argv: list[str]) -> int:
    limit = int(argv[0]) if argv else 400
    folder = Path(argv[1]) if len(argv) > 1 else Path("zerorag_guard")
    found = over(folder, limit)
    for path, lines in found:
        print(f"{path}: {lines} lines, over the limit of {limit}")
    if not found:
        print(f"every module under {folder} is at most {limit} lines")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
