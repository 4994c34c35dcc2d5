"""The ``monitor --plot`` PNG timeline (matplotlib, Agg backend: no display needed) and the
``--csv`` export."""

from __future__ import annotations

import csv
from typing import Any, Optional, Sequence


class MissingExtra(Exception):
    """An optional dependency a requested feature needs is not installed."""


def require_matplotlib() -> None:
    """Fail before monitoring, not after, when ``--plot`` cannot be honoured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtra(
            "--plot needs matplotlib, which is not installed: pip install 'zerorag_guard[cli]'"
        ) from None


def write_plot(
    path: str,
    seconds: Sequence[float],
    rss_mb: Sequence[float],
    thresholds: dict[str, float],
    title: str,
    limit_mb: Optional[float] = None,
) -> None:
    """RSS over time with the preventive, main and critical thresholds as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    try:
        ax.plot(seconds, rss_mb, color="tab:blue", linewidth=1.8, label="RSS")
        for (name, value), color, style in zip(
            thresholds.items(), ("gold", "darkorange", "red"), ("--", "--", "-.")
        ):
            ax.axhline(
                value,
                color=color,
                linestyle=style,
                linewidth=1.4,
                label=f"{name} threshold {value:,.0f} MB",
            )
        top = max([*rss_mb, *thresholds.values()]) * 1.1
        if limit_mb is not None and limit_mb <= top * 1.5:
            ax.axhline(
                limit_mb,
                color="black",
                linestyle=":",
                linewidth=1.2,
                label=f"effective limit {limit_mb:,.0f} MB",
            )
            top = max(top, limit_mb * 1.05)
        ax.set_ylim(0, top)
        ax.set_xlim(0, max(seconds[-1] if seconds else 1.0, 1e-3))
        ax.set_xlabel("seconds")
        ax.set_ylabel("MB")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small", framealpha=0.9)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def write_csv(path: str, rows: Sequence[Sequence[Any]]) -> None:
    """``seconds,rss_mb,level`` rows."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("seconds", "rss_mb", "level"))
        writer.writerows(rows)
