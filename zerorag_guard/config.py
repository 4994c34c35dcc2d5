"""Settings: one frozen :class:`GuardConfig`, read from the environment or a ``.env`` file.

The four variables of the product guide keep their names (``MEMORY_THRESHOLD_MB``,
``MEMORY_CRITICAL_THRESHOLD_MB``, ``GC_INTERVAL_SECONDS``, ``BATCH_SIZE``); every other setting
takes the ``ZERORAG_GUARD_`` prefix. Every value is validated in one place, ``__post_init__``, so
the environment, a ``.env`` file and ``configure(...)`` at run time are held to the same rules.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from .errors import ConfigError
from .units import AUTO, MAX_MB, as_float, as_int, parse_bool, parse_size_mb, parse_threshold_mb

__all__ = ["MAX_MB", "GuardConfig", "parse_bool", "parse_size_mb", "recommend_config"]

logger = logging.getLogger("zerorag_guard")

PREFIX = "ZERORAG_GUARD_"
_DEFAULT_CRITICAL_MB = 1200.0


def _spec(
    default: Any,
    env: str,
    expected: str,
    kind: type = float,
    low: float = 0.0,
    high: float = MAX_MB,
    low_inclusive: bool = False,
) -> Any:
    return field(
        default=default,
        metadata={
            "env": env,
            "expected": expected,
            "kind": kind,
            "low": low,
            "high": high,
            "low_inclusive": low_inclusive,
        },
    )


@dataclass(frozen=True)
class GuardConfig:
    """The monitor's settings; immutable, so a reader never sees half of a change.

    Sizes are in MB (2**20 bytes), times in seconds. Build one with :meth:`from_env` or by
    keyword; change the live settings with :func:`zerorag_guard.configure`.
    """

    threshold_mb: Union[float, str] = _spec(
        1000.0, "MEMORY_THRESHOLD_MB", "a size in MB above 0, e.g. 1000, or auto"
    )
    critical_threshold_mb: Union[float, str] = _spec(
        _DEFAULT_CRITICAL_MB,
        "MEMORY_CRITICAL_THRESHOLD_MB",
        "a size in MB above MEMORY_THRESHOLD_MB, e.g. 1200, or auto",
    )
    gc_interval_seconds: float = _spec(
        180.0, "GC_INTERVAL_SECONDS", "seconds between 0 and 86400, e.g. 180", high=86400.0
    )
    batch_size: int = _spec(
        100, "BATCH_SIZE", "a whole number from 1 to 10000000, e.g. 100", int, 1, 10_000_000, True
    )
    sample_interval: float = _spec(
        0.1,
        PREFIX + "SAMPLE_INTERVAL",
        "seconds from 0.001 to 60, e.g. 0.1",
        float,
        0.001,
        60.0,
        True,
    )
    preventive_ratio: float = _spec(
        0.8,
        PREFIX + "PREVENTIVE_RATIO",
        "a fraction of the main threshold between 0 and 1, e.g. 0.8",
        high=0.999,
    )
    hysteresis_ratio: float = _spec(
        0.05,
        PREFIX + "HYSTERESIS_RATIO",
        "a fraction from 0 to 0.5: a level is left only below threshold x (1 - ratio), e.g. 0.05",
        float,
        0.0,
        0.5,
        True,
    )
    history_size: int = _spec(
        3000,
        PREFIX + "HISTORY_SIZE",
        "a whole number of samples from 10 to 10000000, e.g. 3000",
        int,
        10,
        10_000_000,
        True,
    )
    alert_history_size: int = _spec(
        200,
        PREFIX + "ALERT_HISTORY_SIZE",
        "a whole number from 1 to 1000000, e.g. 200",
        int,
        1,
        1_000_000,
        True,
    )
    operation_history_size: int = _spec(
        1000,
        PREFIX + "OPERATION_HISTORY_SIZE",
        "a whole number from 1 to 1000000, e.g. 1000",
        int,
        1,
        1_000_000,
        True,
    )
    cleanup_cooldown_seconds: float = _spec(
        5.0,
        PREFIX + "CLEANUP_COOLDOWN_SECONDS",
        "seconds from 0 to 3600, e.g. 5",
        float,
        0.0,
        3600.0,
        True,
    )
    aggressive_cooldown_seconds: float = _spec(
        15.0,
        PREFIX + "AGGRESSIVE_COOLDOWN_SECONDS",
        "seconds from 0 to 3600, e.g. 15",
        float,
        0.0,
        3600.0,
        True,
    )
    cleanup_queue_size: int = _spec(
        4,
        PREFIX + "CLEANUP_QUEUE_SIZE",
        "a whole number from 1 to 10000, e.g. 4",
        int,
        1,
        10_000,
        True,
    )
    gc_time_budget: float = _spec(
        0.05,
        PREFIX + "GC_TIME_BUDGET",
        "the largest fraction of wall time spent in routine GC, above 0 up to 1, e.g. 0.05",
        float,
        0.0,
        1.0,
    )
    slow_operation_seconds: float = _spec(
        60.0, PREFIX + "SLOW_OPERATION_SECONDS", "seconds above 0, e.g. 60", high=7 * 86400.0
    )
    error_rate_threshold: float = _spec(
        0.2, PREFIX + "ERROR_RATE_THRESHOLD", "a fraction above 0 up to 1, e.g. 0.2", high=1.0
    )
    alert_repeat_seconds: float = _spec(
        300.0,
        PREFIX + "ALERT_REPEAT_SECONDS",
        "seconds from 0 (every alert raised) to 86400: the same alert again within them is "
        "counted on its open episode, e.g. 300",
        float,
        0.0,
        86400.0,
        True,
    )
    predict_seconds: float = _spec(
        30.0,
        PREFIX + "PREDICT_SECONDS",
        "seconds from 0 (off) to 3600: a climb that reaches the main or critical threshold "
        "within them raises a trend alert and cleans up early, e.g. 30",
        float,
        0.0,
        3600.0,
        True,
    )
    pressure_percent: float = _spec(
        20.0,
        PREFIX + "PRESSURE_PERCENT",
        "a percentage from 0 (off) to 100: PSI's some avg10 that counts as HIGH, e.g. 20",
        float,
        0.0,
        100.0,
        True,
    )
    share_node: bool = _spec(
        False, PREFIX + "SHARE_NODE", "a boolean (1/0, true/false, yes/no, on/off)", bool
    )
    use_kernel_peak: bool = _spec(
        True, PREFIX + "USE_KERNEL_PEAK", "a boolean (1/0, true/false, yes/no, on/off)", bool
    )
    control_socket: bool = _spec(
        True, PREFIX + "CONTROL_SOCKET", "a boolean (1/0, true/false, yes/no, on/off)", bool
    )

    def __post_init__(self) -> None:
        # Report the values as given ("1 GB"), not as parsed.
        given_main, given_critical = self.threshold_mb, self.critical_threshold_mb
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check(f, getattr(self, f.name)))
        if self.auto_thresholds:
            return  # checked against the machine when derived (zerorag_guard.monitor.thresholds)
        if float(self.critical_threshold_mb) > float(self.threshold_mb):
            return
        if self.critical_threshold_mb == _DEFAULT_CRITICAL_MB:
            # Only the main threshold was moved: it is the one to name, not the untouched default.
            raise ConfigError(
                "MEMORY_THRESHOLD_MB",
                given_main,
                f"a size below MEMORY_CRITICAL_THRESHOLD_MB ({_DEFAULT_CRITICAL_MB:g} MB, its "
                "default); raise MEMORY_CRITICAL_THRESHOLD_MB with it",
            )
        raise ConfigError(
            "MEMORY_CRITICAL_THRESHOLD_MB",
            given_critical,
            f"a size above MEMORY_THRESHOLD_MB ({self.threshold_mb:g} MB)",
        )

    @property
    def auto_thresholds(self) -> bool:
        """Whether either threshold is derived from the machine (see
        :mod:`zerorag_guard.monitor.thresholds`)."""
        return AUTO in (self.threshold_mb, self.critical_threshold_mb)

    @property
    def preventive_threshold_mb(self) -> Optional[float]:
        """The first threshold: ``preventive_ratio`` of the main one (80% by default); None when
        the main one is ``auto`` (the monitor's :attr:`~zerorag_guard.MemoryMonitor.thresholds`
        has the value in force)."""
        if self.threshold_mb == AUTO:
            return None
        return float(self.threshold_mb) * self.preventive_ratio

    def replace(self, **changes: Any) -> GuardConfig:
        """A copy with ``changes`` applied and validated; unknown names: :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                raise ConfigError(
                    key, changes[key], "one of the settings " + ", ".join(sorted(names))
                )
        return GuardConfig(**{**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict, with the derived preventive threshold."""
        out = dataclasses.asdict(self)
        out["preventive_threshold_mb"] = self.preventive_threshold_mb
        return out

    @classmethod
    def from_env(
        cls,
        environ: Optional[Mapping[str, str]] = None,
        dotenv_path: Optional[str | os.PathLike[str]] = None,
    ) -> GuardConfig:
        """Read the settings from ``environ`` (default ``os.environ``) over a ``.env`` file.

        The ``.env`` file is ``dotenv_path`` or, when not given, ``.env`` in the working
        directory if there is one; the environment wins over it. An unknown ``ZERORAG_GUARD_*``
        variable is an error: it is almost always a typo that would otherwise be ignored.
        """
        env: dict[str, str] = {}
        path = Path(dotenv_path) if dotenv_path is not None else Path.cwd() / ".env"
        if dotenv_path is not None or path.is_file():
            env.update(_read_dotenv(path))
        env.update(os.environ if environ is None else environ)
        by_env = {f.metadata["env"]: f.name for f in dataclasses.fields(cls)}
        for key in env:
            if key.startswith(PREFIX) and key not in by_env:
                known = ", ".join(sorted(k for k in by_env if k.startswith(PREFIX)))
                raise ConfigError(key, env[key], f"no such setting; known: {known}")
        values: dict[str, Any] = {name: env[var] for var, name in by_env.items() if var in env}
        return cls(**values)


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError("dotenv_path", str(path), "an existing .env file")
    try:
        from dotenv import dotenv_values
    except ImportError:  # pragma: no cover - exercised only without the extra
        logger.warning(
            "%s exists but python-dotenv is not installed "
            "(pip install 'zerorag_guard[dotenv]'); it is ignored",
            path,
        )
        return {}
    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, or not UTF-8 text
        raise ConfigError(
            "dotenv_path", str(path), f"a readable UTF-8 .env file ({type(exc).__name__}: {exc})"
        ) from None
    return {k: v for k, v in values.items() if v is not None}


def _check(f: dataclasses.Field[Any], value: Any) -> Any:
    meta = f.metadata
    env, expected, kind = meta["env"], meta["expected"], meta["kind"]
    if kind is bool:
        return parse_bool(value, env)
    if isinstance(value, bool):
        raise ConfigError(env, value, expected)
    if kind is int:
        number: float = as_int(value, env, expected)
    elif f.name in ("threshold_mb", "critical_threshold_mb"):
        parsed = parse_threshold_mb(value, env, expected)
        if parsed == AUTO:
            return parsed
        number = float(parsed)
    elif f.name.endswith("_mb"):
        number = parse_size_mb(value, env, expected)
    else:
        number = as_float(value, env, expected)
    low, high = meta["low"], meta["high"]
    too_low = number < low if meta["low_inclusive"] else number <= low
    if too_low or number > high:
        raise ConfigError(env, value, expected)
    return kind(number)


# The guide's table: (at least this much memory in MB, threshold, critical, batch, GC interval).
_RECOMMENDATIONS = (
    (16 * 1024, 1200.0, 1500.0, 150, 300.0),
    (8 * 1024, 1000.0, 1200.0, 100, 180.0),
    (4 * 1024, 600.0, 800.0, 50, 120.0),
)


def recommend_config(total_mb: float) -> GuardConfig:
    """The product guide's settings for a machine or container with ``total_mb`` of memory.

    4 GB → 600/800 MB, batch 50, GC 120 s; 8 GB → 1000/1200, 100, 180 s; 16 GB and more →
    1200/1500, 150, 300 s. Sizes between rows take the row below. Below 4 GB the 4 GB row is
    scaled down in proportion (so a 1 GB container gets 150/200 MB), keeping the critical
    threshold well inside the memory there is.
    """
    total = parse_size_mb(total_mb, "total_mb", "the machine's memory in MB, above 0")
    for floor, main, critical, batch, gc_s in _RECOMMENDATIONS:
        if total >= floor:
            return GuardConfig(
                threshold_mb=main,
                critical_threshold_mb=critical,
                batch_size=batch,
                gc_interval_seconds=gc_s,
            )
    _, main, critical, batch, gc_s = _RECOMMENDATIONS[-1]
    scale = total / (4 * 1024)
    return GuardConfig(
        threshold_mb=main * scale,
        critical_threshold_mb=critical * scale,
        batch_size=max(1, round(batch * scale)),
        gc_interval_seconds=gc_s,
    )
