"""Predictive cleanup: a steady climb is announced (kind ``trend``) before it reaches a
threshold, and cleaned up early; a step that then stays flat is not. Injected readings and clock
for the logic, then one run with real memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from budget_helpers import Steady

from zerorag_guard import GuardConfig, Level, MemoryMonitor
from zerorag_guard.memory.limits import EffectiveLimit
from zerorag_guard.memory.probes import MB, MemoryProbe

HOST = EffectiveLimit(64 * 1024 * MB, "host", "physical memory")


class Clocked:
    """A monitor (1000 / 1200 MB) on an injected reading and clock, sampled every 0.1 s."""

    def __init__(self, start_mb: float, **settings: object) -> None:
        self.reader = Steady(start_mb)
        self.now = 0.0
        self.monitor = MemoryMonitor(
            GuardConfig(cleanup_cooldown_seconds=0, **settings),  # type: ignore[arg-type]
            probe=MemoryProbe(self.reader),
            limit_reader=lambda: HOST,
            clock=lambda: self.now,
        )

    def step(self, mb: float) -> None:
        self.now += 0.1
        self.reader.mb = mb
        self.monitor.sample()

    def kinds(self) -> list[tuple[str, str, Level]]:
        return [(a.kind, a.severity, a.level) for a in self.monitor.alerts]


def test_a_steady_climb_is_announced_before_any_threshold_and_cleaned_up_early() -> None:
    m = Clocked(500)
    for i in range(1, 40):
        m.step(500 + 25 * i)  # 250 MB/s
        if m.monitor.alerts:
            break
    (trend,) = m.monitor.alerts
    # Ten differences make the window (1 s): at 775 MB the main threshold is 0.9 s away, within
    # the 1 s the climb has been seen going on.
    assert (trend.kind, trend.severity, trend.level) == ("trend", "high", Level.HIGH)
    assert trend.rss_mb == 775 < 800  # before even the preventive threshold
    assert trend.message == (
        "memory rising 250.0 MB/s: at 775.0 MB it reaches the main threshold 1000 MB in 0.9 s"
    )
    assert trend.data == {"rate_mb_per_s": 250.0, "seconds_left": 0.9}
    m.monitor.wait_for_cleanups(5)
    assert m.monitor.counters()["cleanups"]["standard"] == 1  # the HIGH level's, early
    for i in range(12, 30):
        m.step(500 + 25 * i)
    kinds = [k for k in m.kinds() if k[0] in ("trend", "memory")]
    assert kinds == [
        ("trend", "high", Level.HIGH),
        ("memory", "medium", Level.PREVENTIVE),
        ("trend", "critical", Level.CRITICAL),  # at 875 MB: 1200 MB is 1.3 s away
        ("memory", "high", Level.HIGH),
        ("memory", "critical", Level.CRITICAL),
    ]
    assert m.monitor.counters()["cleanups"]["aggressive"] >= 1


def test_a_climb_is_extrapolated_no_further_than_it_has_gone_on() -> None:
    m = Clocked(500, critical_threshold_mb=20_000)  # critical far away
    for i in range(1, 40):
        m.step(500 + 10 * i)  # 100 MB/s
    (trend,) = [a for a in m.monitor.alerts if a.kind == "trend"]
    # At 760 MB the main threshold is 2.4 s away, and the climb has gone on for 2.5 s.
    assert (trend.severity, trend.level, trend.rss_mb) == ("high", Level.HIGH, 760)
    assert trend.data["seconds_left"] == 2.4


def test_a_step_that_then_stays_flat_predicts_nothing() -> None:
    m = Clocked(300)
    for mb in [300] * 12 + [800] + [800] * 30:  # a 500 MB model, loaded at once
        m.step(mb)
    assert [k for k in m.kinds() if k[0] == "trend"] == []
    # A step over three samples is still mostly flat in the window.
    m = Clocked(300)
    for mb in [300] * 12 + [470, 640, 800] + [800] * 30:
        m.step(mb)
    assert [k for k in m.kinds() if k[0] == "trend"] == []


def test_a_slow_climb_beyond_the_horizon_and_predict_zero_raise_nothing() -> None:
    m = Clocked(500)
    for i in range(1, 50):
        m.step(500 + 0.5 * i)  # 5 MB/s: 100 s to the main threshold, over the 30 s horizon
    assert m.kinds() == []
    off = Clocked(500, predict_seconds=0)
    for i in range(1, 30):
        off.step(500 + 25 * i)
    assert [k for k in off.kinds() if k[0] == "trend"] == []


JOB = textwrap.dedent("""
    import json, time
    from zerorag_guard import get_monitor
    monitor = get_monitor()
    monitor.configure(sample_interval=0.05, alert_repeat_seconds=300)
    rss = monitor.rss_mb()
    monitor.configure(threshold_mb=rss + 400, critical_threshold_mb=rss + 600)
    seen = []
    monitor.add_listener(lambda a: seen.append((a.kind, a.level.name, round(a.rss_mb, 1))))
    held = []
    while monitor.rss_mb() < rss + 650:  # about 250 MB/s: 12.5 MB touched every 50 ms
        held.append(b"x" * (25 << 19))
        time.sleep(0.05)
    time.sleep(0.2)
    print(json.dumps({"start_mb": rss, "alerts": seen}))
""")


@pytest.mark.system
def test_real_memory_climbing_is_announced_before_the_main_threshold() -> None:
    done = subprocess.run(
        [sys.executable, "-c", JOB], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    alerts, start = report["alerts"], report["start_mb"]
    print(f"trend-real: start {start:.1f} MB, alerts {alerts}")
    kinds = [a[0] for a in alerts]
    first_high = next(i for i, a in enumerate(alerts) if a[0] == "memory" and a[1] != "PREVENTIVE")
    assert "trend" in kinds[:first_high], alerts  # announced before any HIGH alert ...
    assert alerts[kinds.index("trend")][2] < start + 400  # ... and under the main threshold
