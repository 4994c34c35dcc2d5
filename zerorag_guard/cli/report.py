"""``zerorag-guard report``: this process's health report."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..monitor import get_monitor


def register(sub: Any) -> None:
    parser = sub.add_parser("report", help="print the health report")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    health = get_monitor().get_health_status()
    if args.json:
        print(json.dumps(health, indent=2, default=str))
        return 0
    usage = health["memory_usage"]
    print(f"health score {health['health_score']}/100 ({health['status']})")
    print(f"RSS {usage['rss_mb']} MB, level {usage['level']}, thresholds "
          f"{usage['preventive_threshold_mb']}/{usage['threshold_mb']}/"
          f"{usage['critical_threshold_mb']} MB, limit {usage['limit_mb']} MB "
          f"({usage['limit_source']})")
    for issue in health["health_issues"]:
        print(f"issue: {issue}")
    return 0
