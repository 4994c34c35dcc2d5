"""The thresholds in force: ``auto`` derived from the limit and the steady memory (formula figures
written out by hand), hostile forms refused, a budget the user set governing the levels inside
it, derived again when the container is resized; then real child cgroups of 600 MB, 2 GB, 6 GB."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any

import pytest
from budget_helpers import Steady, monitor_with

from zerorag_guard import ConfigError, GuardConfig, Level, MemoryMonitor, memory_budget
from zerorag_guard.budget.budget import current_budget
from zerorag_guard.memory.limits import EffectiveLimit
from zerorag_guard.memory.probes import MB, MemoryProbe
from zerorag_guard.monitor.thresholds import derive

CGROUP_2G = EffectiveLimit(2048 * MB, "cgroup v2", "/job/memory.max")


def mb(t: Any) -> tuple[float, float, float]:
    return (round(t.preventive / MB, 1), round(t.main / MB, 1), round(t.critical / MB, 1))


# -- the formula ----------------------------------------------------------------------------------
def test_auto_thresholds_follow_the_limit_and_the_steady_memory() -> None:
    auto = GuardConfig(threshold_mb="auto", critical_threshold_mb="auto")
    # 2 GB container, a loaded model of 500 MB: critical 90% of 2048 = 1843.2; main 500 + 3/4 of
    # (1843.2 - 500) = 1507.4; preventive 80% of that = 1205.9.
    t = derive(auto, CGROUP_2G, 500 * MB)
    assert mb(t) == (1205.9, 1507.4, 1843.2)
    assert t.source == "auto" and t.problem is None
    assert t.why["critical"] == "auto: 90% of the effective limit (2,048 MB, cgroup v2)"
    assert t.why["main"] == "auto: steady memory 500 MB + 3/4 of the room to critical"
    # 600 MB container, 100 MB steady: 540; 100 + 330 = 430; 344.
    assert mb(derive(auto, EffectiveLimit(600 * MB, "cgroup v1", ""), 100 * MB)) == (
        344.0,
        430.0,
        540.0,
    )


def test_one_auto_and_one_number() -> None:
    # main given, critical auto: 90% of the limit above it.
    t = derive(GuardConfig(threshold_mb=1000, critical_threshold_mb="auto"), CGROUP_2G, 0)
    assert mb(t) == (800.0, 1000.0, 1843.2) and t.problem is None
    # critical given, main auto: under it, above the steady memory.
    t = derive(GuardConfig(threshold_mb="auto", critical_threshold_mb=1200), CGROUP_2G, 400 * MB)
    assert mb(t) == (800.0, 1000.0, 1200.0)  # 400 + 3/4 x 800


@pytest.mark.parametrize(
    ("settings", "variable", "expected"),
    [
        # A main threshold the automatic critical one (90% of 2 GB = 1843 MB) cannot be above.
        (
            {"threshold_mb": 1900, "critical_threshold_mb": "auto"},
            "MEMORY_THRESHOLD_MB",
            "a size below the automatic critical threshold, 90% of the effective limit "
            "(1,843 MB of 2,048 MB, cgroup v2)",
        ),
        # A critical threshold below the steady memory leaves no room for an automatic main.
        (
            {"threshold_mb": "auto", "critical_threshold_mb": 300},
            "MEMORY_CRITICAL_THRESHOLD_MB",
            "a size above the process's steady memory (500 MB)",
        ),
    ],
)
def test_auto_that_cannot_fit_the_machine_is_refused_naming_the_variable(
    settings: dict[str, Any], variable: str, expected: str
) -> None:
    monitor = monitor_with(Steady(500), CGROUP_2G)
    with pytest.raises(ConfigError) as info:
        monitor.configure(**settings)
    assert info.value.variable == variable and expected in str(info.value)
    assert monitor.config.threshold_mb == 1000  # nothing changed
    t = derive(GuardConfig(**settings), CGROUP_2G, 500 * MB)
    assert t.problem is not None and t.problem.variable == variable  # reported, not raised


@pytest.mark.parametrize("value", ["Auto5", "autox", "au to", "auto auto", "5 auto", ""])
def test_hostile_auto_forms_name_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"MEMORY_THRESHOLD_MB=.* or auto"):
        GuardConfig.from_env({"MEMORY_THRESHOLD_MB": value})


@pytest.mark.parametrize("value", ["auto", "AUTO", " Auto "])
def test_auto_is_read_from_the_environment(value: str) -> None:
    cfg = GuardConfig.from_env(
        {"MEMORY_THRESHOLD_MB": value, "MEMORY_CRITICAL_THRESHOLD_MB": value}
    )
    assert (cfg.threshold_mb, cfg.critical_threshold_mb) == ("auto", "auto")
    assert cfg.preventive_threshold_mb is None
    assert cfg.to_dict()["threshold_mb"] == "auto"


def test_the_report_shows_auto_and_why() -> None:
    monitor = monitor_with(
        Steady(500), CGROUP_2G, threshold_mb="auto", critical_threshold_mb="auto"
    )
    usage = monitor.get_health_status()["memory_usage"]
    assert usage["thresholds_source"] == "auto"
    assert (round(usage["threshold_mb"], 1), round(usage["critical_threshold_mb"], 1)) == (
        1507.4,
        1843.2,
    )
    assert usage["thresholds_why"]["main"].startswith("auto: steady memory 500 MB")
    assert monitor.get_health_status()["config"]["threshold_mb"] == "auto"


# -- derived again --------------------------------------------------------------------------------
def test_auto_thresholds_follow_a_resized_container_and_a_moved_baseline() -> None:
    limits, reader, clock = [CGROUP_2G], Steady(500), [0.0]
    monitor = MemoryMonitor(
        GuardConfig(threshold_mb="auto", critical_threshold_mb="auto"),
        probe=MemoryProbe(reader),
        limit_reader=lambda: limits[-1],
        clock=lambda: clock[0],
    )

    def run(seconds: float) -> None:
        for _ in range(int(seconds / 0.1)):
            clock[0] += 0.1
            monitor.tick()

    assert round(monitor.thresholds.critical / MB, 1) == 1843.2
    limits.append(EffectiveLimit(4096 * MB, "cgroup v2", "/job/memory.max"))  # resized live
    run(40)  # the limit is read again every 30 s
    assert round(monitor.thresholds.critical / MB, 1) == 3686.4  # 90% of 4 GB
    assert round(monitor.thresholds.main / MB, 1) == 2889.8  # 500 + 3/4 x 3186.4
    reader.mb = 900  # a second model loaded: the baseline moved, and stays
    run(70)  # the steady memory is the last minute's 10th percentile
    assert round(monitor.thresholds.main / MB, 1) == 2989.8  # 900 + 3/4 x 2786.4
    assert monitor.level == Level.NORMAL
    reader.mb = 950  # moved by less than 10%: kept
    run(70)
    assert round(monitor.thresholds.main / MB, 1) == 2989.8


# -- a budget the user set governs inside it ---------------------------------------------------
def test_inside_a_budget_the_user_set_its_ceiling_governs_the_levels() -> None:
    reader = Steady(500)
    monitor = monitor_with(reader, CGROUP_2G)  # 800 / 1000 / 1200 MB
    with memory_budget(1500, monitor=monitor):
        assert monitor.thresholds.source == "budget"
        assert mb(monitor.thresholds) == (1200.0, 1500.0, 1800.0)  # 1500 x 1200/1000
        for rss in (1100, 1397, 1250, 1397):
            reader.mb = rss
            monitor.sample()
        health = monitor.get_health_status()
        assert monitor.level == Level.PREVENTIVE
        assert health["status"] == "healthy"
        assert not [a for a in monitor.alerts if a.severity in ("high", "critical")]
    assert monitor.thresholds.source == "settings"  # the budget ended
    monitor.sample()
    assert monitor.level == Level.CRITICAL  # 1397 MB is over the settings' 1200 MB
    # The container still binds: a budget at 90% of 2 GB widens to no more than the limit.
    with memory_budget(5000, monitor=monitor):
        assert round(monitor.thresholds.main / MB, 1) == 1843.2
        assert round(monitor.thresholds.critical / MB, 1) == 2048.0


def test_the_widest_of_several_budgets_governs_and_the_next_one_when_it_ends() -> None:
    monitor = monitor_with(Steady(500), CGROUP_2G)
    wide, narrower = memory_budget(1500, monitor=monitor), memory_budget(1300, monitor=monitor)
    wide.__enter__()
    narrower.__enter__()
    assert round(monitor.thresholds.main / MB) == 1500
    wide.__exit__(None, None, None)  # the widest ended first: the next one governs
    assert round(monitor.thresholds.main / MB) == 1300
    assert current_budget() is not None and current_budget().limit_mb == 1300
    narrower.__exit__(None, None, None)
    assert monitor.thresholds.source == "settings"
    assert current_budget() is None  # neither stays active, though they were left out of order


def test_a_budget_below_the_thresholds_changes_nothing_and_a_default_budget_neither() -> None:
    monitor = monitor_with(Steady(500))
    with memory_budget(600, monitor=monitor), memory_budget(monitor=monitor) as default:
        assert monitor.thresholds.source == "settings"
        assert default.limit_mb == pytest.approx(600)


# -- real child cgroups ---------------------------------------------------------------------------
JOB = textwrap.dedent("""
    import json, time
    from zerorag_guard import get_monitor
    held = bytearray(STEADY_MB << 20)  # the job's steady memory, resident
    for i in range(0, len(held), 4096):
        held[i] = 1
    monitor = get_monitor()
    time.sleep(1.0)
    health = monitor.get_health_status()
    print(json.dumps({"usage": health["memory_usage"], "level": monitor.level.name}))
""")


@pytest.mark.system
@pytest.mark.parametrize(("limit_mb", "steady_mb"), [(600, 150), (2048, 400), (6144, 400)])
def test_auto_thresholds_fit_real_cgroups(limit_mb: int, steady_mb: int) -> None:
    from cgroup_helpers import child_memory_cgroup, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    env_job = JOB.replace("STEADY_MB", str(steady_mb))
    with child_memory_cgroup(limit_mb * MB) as cg:
        done = cg.run(
            [
                "/usr/bin/env",
                "MEMORY_THRESHOLD_MB=auto",
                "MEMORY_CRITICAL_THRESHOLD_MB=auto",
                sys.executable,
                "-c",
                env_job,
            ],
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    usage = report["usage"]
    print(f"auto-{limit_mb}: {json.dumps(usage)}")
    assert usage["limit_source"].startswith("cgroup")
    assert usage["limit_mb"] == pytest.approx(limit_mb, abs=1)
    assert usage["thresholds_source"] == "auto"
    assert usage["critical_threshold_mb"] <= 0.9 * limit_mb + 0.1
    assert usage["rss_mb"] < usage["preventive_threshold_mb"] < usage["threshold_mb"]
    assert report["level"] == "NORMAL"
