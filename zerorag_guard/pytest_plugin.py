"""pytest plugin (entry point ``pytest11``): markers, fixtures and the memory report."""

from __future__ import annotations
