"""The monitor's vocabulary: memory levels, samples and alerts."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple


class Level(enum.IntEnum):
    """How close memory is to the thresholds; ordered, so ``level >= Level.HIGH`` reads well."""

    NORMAL = 0
    PREVENTIVE = 1
    HIGH = 2
    CRITICAL = 3

    def __str__(self) -> str:
        return self.name


#: The cleanup each level calls for (progressive: light → standard → aggressive).
CLEANUP_FOR_LEVEL = {
    Level.PREVENTIVE: "light",
    Level.HIGH: "standard",
    Level.CRITICAL: "aggressive",
}
#: The alert severity raised when memory enters a level.
SEVERITY_FOR_LEVEL = {Level.PREVENTIVE: "medium", Level.HIGH: "high", Level.CRITICAL: "critical"}
SEVERITIES = ("info", "medium", "high", "critical")


class Sample(NamedTuple):
    """One reading: monotonic ``time`` in seconds, ``rss_mb``, and the level it led to."""

    time: float
    rss_mb: float
    level: Level


@dataclass(frozen=True)
class Alert:
    """Something a person should know: ``severity`` is info, medium, high or critical; ``kind`` is
    ``memory``, ``recovered``, ``slow_operation``, ``error_rate`` or ``cleanup_queue_overflow``."""

    time: float
    severity: str
    kind: str
    message: str
    rss_mb: float
    level: Level
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["level"] = self.level.name
        return out
