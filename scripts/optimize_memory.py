"""The product guide's memory tool: ``python scripts/optimize_memory.py --report``.

Flags: ``--report``, ``--analyze``, ``--cleanup``, ``--aggressive``, ``--monitor SECONDS``,
``--optimize TARGET_MB`` (and ``--json``, ``--pid PID``); each runs the ``zerorag-guard``
subcommand of the same name. A thin wrapper: the logic is in ``zerorag_guard.cli.guide``.
"""

import sys
from pathlib import Path

try:
    from zerorag_guard.cli.guide import optimize_memory
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from zerorag_guard.cli.guide import optimize_memory

if __name__ == "__main__":
    sys.exit(optimize_memory())
