"""The product guide's memory debugging tool: ``python debug_memory_usage.py``.

Runs ``zerorag-guard debug`` (top types, allocation sites, GC, cgroup and malloc figures, the
monitor's history and alerts); ``--json`` and ``--pid PID`` are passed on.
"""

import sys

from zerorag_guard.cli.guide import debug_memory_usage

if __name__ == "__main__":
    sys.exit(debug_memory_usage())
