"""Argument types and options shared by the subcommands; a bad value is a one-line usage error."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..control.client import setting_name


def positive_float(text: str) -> float:
    """A finite number above 0 (seconds, megabytes)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return value


def pid(text: str) -> int:
    """A process id: a whole number above 0 (whether a guarded process has it is checked later,
    and is exit code 3, not a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a process id (a whole number above 0), got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a process id (a whole number above 0), got {text!r}"
        )
    return value


def assignment(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` with KEY a setting's variable (``MEMORY_THRESHOLD_MB``) or field name
    (``threshold_mb``); returns (field name, value as given, validated by the settings)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE, e.g. MEMORY_THRESHOLD_MB=800, got {text!r}"
        )
    try:
        return setting_name(key), value.strip()
    except KeyError as exc:
        raise argparse.ArgumentTypeError(str(exc.args[0])) from None


def add_pid(parser: Any, required: bool = False) -> None:
    parser.add_argument(
        "--pid",
        type=pid,
        required=required,
        metavar="PID",
        help="act on the running guarded process PID through its control socket"
        + ("" if required else " (default: this process)"),
    )


def add_json(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
