"""Memory pressure (PSI): a ``some avg10`` at or above ``ZERORAG_GUARD_PRESSURE_PERCENT`` counts
as HIGH for the monitor and its budgets, so batches hold back while the kernel reclaims hard,
before any limit is reached. Injected PSI readings and clock: exact, no timing."""

from __future__ import annotations

import pytest
from budget_helpers import HOST, ItemCost, Steady
from group_helpers import FakeGroup

from zerorag_guard import ConfigError, GuardConfig, Level, MemoryMonitor, memory_budget
from zerorag_guard.memory.probes import MemoryProbe


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor(reader: object, group: FakeGroup, clock: Clock, **config: object) -> MemoryMonitor:
    settings = {"threshold_mb": 1000, "critical_threshold_mb": 1200, **config}
    return MemoryMonitor(
        GuardConfig(**settings),  # type: ignore[arg-type]
        probe=MemoryProbe(reader),  # type: ignore[arg-type]
        limit_reader=lambda: HOST,
        clock=clock,
        group=group,  # type: ignore[arg-type]
    )


def test_sustained_pressure_is_high_until_it_passes() -> None:
    group, clock = FakeGroup(), Clock()
    m = monitor(Steady(100), group, clock)
    group.pressure_percent = 19.9
    assert m.sample().level == Level.NORMAL  # below the default 20%
    clock.now += 1.0
    group.pressure_percent = 25.0
    assert m.sample().level == Level.HIGH  # at 100 MB, far below every threshold
    (alert,) = [a for a in m.alerts if a.kind == "pressure"]
    assert alert.message == (
        "memory pressure: PSI some avg10 25.0% (ZERORAG_GUARD_PRESSURE_PERCENT 20%); "
        "memory at 100.0 MB entered HIGH"
    )
    group.pressure_percent = 2.0
    clock.now += 0.5
    assert m.sample().level == Level.HIGH  # PSI is read at most once a second
    clock.now += 0.5
    assert m.sample().level == Level.NORMAL
    assert m.alerts[-1].kind == "pressure"  # the episode is over once quiet for the window
    clock.now += m.config.alert_repeat_seconds
    m.sample()
    assert m.alerts[-1].kind == "recovered"
    assert m.alerts[-1].data["recovered_from"] == "HIGH"
    assert m.under_pressure is False


def test_pressure_never_lowers_a_level_and_zero_turns_it_off() -> None:
    group, clock = FakeGroup(), Clock()
    group.pressure_percent = 90.0
    assert monitor(Steady(1250), group, clock).sample().level == Level.CRITICAL
    off = monitor(Steady(100), group, clock, pressure_percent=0)
    assert off.sample().level == Level.NORMAL and off.under_pressure is False
    group.pressure_percent = None  # a kernel without PSI
    assert monitor(Steady(100), group, clock).sample().level == Level.NORMAL


@pytest.mark.parametrize("value", ["150", "-1", "lots"])
def test_a_wrong_pressure_percent_names_the_variable_and_the_form(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        GuardConfig.from_env({"ZERORAG_GUARD_PRESSURE_PERCENT": value})
    message = str(info.value)
    assert "ZERORAG_GUARD_PRESSURE_PERCENT" in message and repr(value) in message
    assert "a percentage from 0 (off) to 100" in message


def test_batches_hold_back_while_the_kernel_reclaims() -> None:
    reader, group, clock = ItemCost(base_mb=100, cost_mb=0.1), FakeGroup(), Clock()
    group.cgroup = None
    m = monitor(reader, group, clock)
    sizes = []
    with memory_budget(900, batch_size=64, monitor=m) as budget:
        for i, batch in enumerate(budget.chunks(range(2000))):
            sizes.append(len(batch))
            clock.now += 1.0
            group.pressure_percent = 40.0 if 8 <= i < 12 else 0.0
            if len(sizes) == 20:
                break
    assert sizes[:9] == [1, 2, 4, 8, 16, 32, 64, 64, 64]
    assert sizes[9:13] == [32, 16, 8, 4]  # halved at each batch under pressure
    assert sizes[13:17] == [8, 16, 32, 64]  # and grows back once it passed
