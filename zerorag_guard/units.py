"""Sizes, numbers and booleans as people write them in settings: ``"1.5 GB"``, ``"yes"``.

Every parser raises :class:`~zerorag_guard.ConfigError` naming the setting, the value given and
the form expected.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import ConfigError

#: The value that asks for a threshold derived from the machine (see
#: :mod:`zerorag_guard.monitor.thresholds`).
AUTO = "auto"
#: No process this library guards needs more than 64 TiB: larger figures are typos (an extra
#: zero, bytes given where megabytes are expected).
MAX_MB = 64 * 1024 * 1024.0
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_UNITS_MB = {
    "": 1.0,
    "b": 1 / (1024 * 1024),
    "k": 1 / 1024,
    "kb": 1 / 1024,
    "kib": 1 / 1024,
    "m": 1.0,
    "mb": 1.0,
    "mib": 1.0,
    "g": 1024.0,
    "gb": 1024.0,
    "gib": 1024.0,
    "t": 1024.0 * 1024,
    "tb": 1024.0 * 1024,
    "tib": 1024.0 * 1024,
}


def as_float(value: Any, env: str, expected: str) -> float:
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(env, value, expected) from None
    if not math.isfinite(number):
        raise ConfigError(env, value, expected)
    return number


def as_int(value: Any, env: str, expected: str) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(env, value, expected)
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+]?[0-9]{1,12}\s*", value):
        return int(value)
    if isinstance(value, int):
        return value
    raise ConfigError(env, value, expected)


def parse_size_mb(
    value: Any, name: str = "size", expected: str = "a size such as 512, '512 MB' or '1.5 GB'"
) -> float:
    """A size in MB from a number (already MB) or a string with a unit: ``"200 MB"``, ``"1.5GiB"``.

    Units are binary whatever their spelling (1 GB = 1024 MB), as memory limits are.
    """
    if isinstance(value, bool):
        raise ConfigError(name, value, expected)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS_MB:
            raise ConfigError(name, value, expected)
        number = float(match.group(1)) * _UNITS_MB[unit]
    else:
        raise ConfigError(name, value, expected)
    if not math.isfinite(number) or number <= 0 or number > MAX_MB:
        raise ConfigError(name, value, expected)
    return number


def parse_bool(value: Any, name: str) -> bool:
    """``True``/``False`` from a bool or the usual spellings (1/0, true/false, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, value, "a boolean (1/0, true/false, yes/no, on/off)")


def parse_threshold_mb(value: Any, name: str, expected: str) -> float | str:
    """A threshold: a size (:func:`parse_size_mb`) or :data:`AUTO` (any case, spaces around)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    return parse_size_mb(value, name, expected)
