"""``zerorag-guard monitor SECONDS``: watch memory live for a while, then summarize.

The live view (rich) shows current RSS, the level, a sparkline, recent alerts and a progress bar
for the duration; without rich a plain line per interval. ``--plot`` writes a PNG timeline with
the three thresholds, ``--csv`` the samples. Samples come from the monitor's own history (the
sampler's 100 ms readings), so the timeline is denser than the refresh interval.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any, Optional

from . import _args, _plot, _render
from ._target import Target, health_keys, target_for

#: ``since`` for the first request: later than any sample, so only "now" comes back.
_FUTURE = 1e12


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "monitor",
        help="watch memory live for SECONDS, then summarize",
        description="Watch memory live (RSS, level, sparkline, alerts) for "
        "SECONDS, then print a summary.",
    )
    parser.add_argument(
        "seconds", type=_args.positive_float, metavar="SECONDS", help="how long to watch (above 0)"
    )
    parser.add_argument(
        "--interval",
        type=_args.positive_float,
        default=0.5,
        metavar="S",
        help="refresh interval in seconds (default 0.5)",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="write a PNG timeline (matplotlib)")
    parser.add_argument("--csv", metavar="FILE", help="write the samples as CSV")
    _args.add_json(parser)
    _args.add_pid(parser)
    parser.set_defaults(func=run)


class Watch:
    """Collects samples and alerts from a target over the window."""

    def __init__(self, target: Target) -> None:
        self.target = target
        first = target.request("history", since=_FUTURE)
        self.origin = float(first["now"])
        self.last = self.origin
        self.config: dict[str, Any] = first["config"]
        # In force (settings, auto or a budget's); an older guarded process sends only config.
        self.in_force: dict[str, Any] = first.get("thresholds") or first["config"]
        self.limit_mb: float = float(first["limit"]["mb"])
        self.wall_start = time.time()
        self.samples: list[tuple[float, float, str]] = []
        self.alerts: list[dict[str, Any]] = []
        self._seen: set[tuple[float, str]] = set()

    def poll(self) -> None:
        reply = self.target.request("history", since=self.last)
        self.config = reply["config"]
        self.in_force = reply.get("thresholds") or reply["config"]
        for t, rss, level in reply["samples"]:
            self.samples.append((round(float(t) - self.origin, 3), float(rss), str(level)))
            self.last = max(self.last, float(t))
        for alert in reply["alerts"]:
            key = (alert["time"], alert["message"])
            if alert["time"] >= self.wall_start and key not in self._seen:
                self._seen.add(key)
                self.alerts.append(alert)

    @property
    def thresholds(self) -> dict[str, float]:
        c = self.in_force
        return {
            "preventive": float(c["preventive_threshold_mb"]),
            "main": float(c["threshold_mb"]),
            "critical": float(c["critical_threshold_mb"]),
        }

    def summary(self, seconds: float) -> dict[str, Any]:
        rss = [s[1] for s in self.samples]
        levels = [s[2] for s in self.samples]
        return {
            "seconds": seconds,
            "samples": len(rss),
            "rss_min_mb": round(min(rss), 1) if rss else None,
            "rss_mean_mb": round(sum(rss) / len(rss), 1) if rss else None,
            "rss_max_mb": round(max(rss), 1) if rss else None,
            "rss_last_mb": round(rss[-1], 1) if rss else None,
            "final_level": levels[-1] if levels else None,
            "level_changes": sum(1 for a, b in itertools.pairwise(levels) if a != b),
            "alerts": len(self.alerts),
            "thresholds_mb": self.thresholds,
        }


def _view(watch: Watch, elapsed: float, seconds: float) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    rss = [s[1] for s in watch.samples]
    level = watch.samples[-1][2] if watch.samples else "-"
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("RSS", _render.mb(rss[-1] if rss else None))
    grid.add_row("level", Text(level, style=_render.LEVEL_STYLE.get(level, "")))
    t = watch.thresholds
    grid.add_row(
        "thresholds", f"{t['preventive']:,.0f} / {t['main']:,.0f} / {t['critical']:,.0f} MB"
    )
    grid.add_row("trend", Text(_render.sparkline(rss, 50), style="cyan"))
    for alert in watch.alerts[-3:]:
        grid.add_row(f"alert {alert['severity']}", Text(alert["message"], style="yellow"))
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=seconds, completed=min(elapsed, seconds), width=50),
        f"{min(elapsed, seconds):.1f}/{seconds:g} s",
    )
    return Panel(
        Group(grid, bar), title=f"zerorag-guard monitor: {watch.target.label}", title_align="left"
    )


def run(args: argparse.Namespace) -> int:
    if args.plot:
        _plot.require_matplotlib()
    target = target_for(args)
    watch = Watch(target)
    con = None if args.json else _render.console()
    start = time.monotonic()
    live: Optional[Any] = None
    if con is not None:
        from rich.live import Live

        live = Live(_view(watch, 0.0, args.seconds), console=con, auto_refresh=False)
        live.start()
    try:
        while True:
            watch.poll()
            elapsed = time.monotonic() - start
            if live is not None:
                live.update(_view(watch, elapsed, args.seconds), refresh=True)
            elif not args.json and watch.samples:
                _, rss, level = watch.samples[-1]
                print(
                    f"{min(elapsed, args.seconds):6.1f}s  RSS {rss:9.1f} MB  {level:<10}  "
                    f"{_render.sparkline([s[1] for s in watch.samples], 30)}",
                    flush=True,
                )
            if elapsed >= args.seconds:
                break
            time.sleep(min(args.interval, args.seconds - elapsed))
    finally:
        if live is not None:
            live.stop()
    summary = watch.summary(args.seconds)
    rows = [list(s) for s in watch.samples]
    if args.csv:
        _plot.write_csv(args.csv, rows)
    if args.plot:
        _plot.write_plot(
            args.plot,
            [s[0] for s in watch.samples],
            [s[1] for s in watch.samples],
            watch.thresholds,
            f"zerorag-guard monitor: {target.label}",
            watch.limit_mb,
        )
    if args.json:
        _render.print_json(
            {
                "pid": target.pid,
                "summary": summary,
                "samples": [{"seconds": t, "rss_mb": r, "level": lv} for t, r, lv in watch.samples],
                "alerts": watch.alerts,
                **health_keys(target.health()),
            }
        )
        return 0
    _render.heading(f"Monitor summary: {target.label}, {args.seconds:g} s")
    _render.pairs(
        "",
        [
            ("samples", summary["samples"]),
            (
                "RSS min / mean / max",
                f"{summary['rss_min_mb']} / {summary['rss_mean_mb']} / {summary['rss_max_mb']} MB",
            ),
            ("RSS last", _render.mb(summary["rss_last_mb"])),
            ("final level", summary["final_level"]),
            ("level changes", summary["level_changes"]),
            ("alerts", summary["alerts"]),
        ],
    )
    for alert in watch.alerts:
        _render.echo(f"alert [{alert['severity']}] {alert['message']}", style="yellow")
    if args.plot:
        _render.echo(f"plot written to {args.plot}")
    if args.csv:
        _render.echo(f"samples written to {args.csv}")
    return 0
