"""Output: rich tables where rich is installed (the ``cli`` extra), plain text otherwise."""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

_console: Any = None
_checked = False
LEVEL_STYLE = {
    "NORMAL": "green",
    "PREVENTIVE": "yellow",
    "HIGH": "dark_orange",
    "CRITICAL": "bold red",
}


def console() -> Optional[Any]:
    """A rich ``Console``, or None when rich is not installed."""
    global _console, _checked
    if not _checked:
        _checked = True
        try:
            from rich.console import Console
        except ImportError:
            _console = None
        else:
            _console = Console(highlight=False)
    return _console


def echo(text: str = "", style: Optional[str] = None) -> None:
    """One line of text (styled only with rich; markup in ``text`` is not interpreted)."""
    con = console()
    if con is None:
        print(text)
    else:
        con.print(text, style=style, markup=False, soft_wrap=True)


def heading(text: str) -> None:
    con = console()
    if con is None:
        print(f"\n== {text} ==")
    else:
        con.print()
        con.rule(f"[bold]{_escape(text)}[/bold]", align="left")


def table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], show_header: bool = True
) -> None:
    """A table; numbers are right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        bool(rows) and all(isinstance(r[i], (int, float)) for r in rows)
        for i in range(len(headers))
    ]
    con = console()
    if con is None:
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        if title:
            print(f"\n{title}")

        def fmt(row: Sequence[str]) -> str:
            return "  ".join(
                v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, widths, numeric)
            ).rstrip()

        if show_header:
            print(fmt(list(headers)))
            print("  ".join("-" * w for w in widths))
        for row in cells:
            print(fmt(row))
        return
    from rich.table import Table

    t = Table(
        title=title or None, title_justify="left", title_style="bold", show_header=show_header
    )
    for h, num in zip(headers, numeric):
        t.add_column(h, justify="right" if num else "left", overflow="fold")
    for row in cells:
        t.add_row(*[_escape(v) for v in row])
    con.print(t)


def pairs(title: str, items: Sequence[tuple[str, Any]]) -> None:
    """A two-column key/value table."""
    table(title, ("", ""), [(k, _cell(v)) for k, v in items], show_header=False)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def mb(value: Any) -> str:
    """``1,234.5 MB`` from a number of MB (or ``-`` for None)."""
    return "-" if value is None else f"{float(value):,.1f} MB"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _escape(text: str) -> str:
    try:
        from rich.markup import escape
    except ImportError:  # pragma: no cover - only called with rich
        return text
    return escape(text)


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """The last ``width`` values as block characters scaled between their min and max."""
    values = list(values)[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low
    if span <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * len(SPARK)))] for v in values)
