"""The monitor, fed exact readings: levels, hysteresis, alerts, listeners, statistics, cleanups,
health; then the real thing under eight threads and across fork."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from fork_helpers import in_forked_child

from zerorag_guard import Alert, GuardConfig, Level, MemoryMonitor, get_monitor
from zerorag_guard.memory.limits import EffectiveLimit
from zerorag_guard.memory.probes import MB, MemoryProbe


class Readings:
    """An RSS reader returning exactly what the test says, in MB."""

    def __init__(self, mb: float = 100.0) -> None:
        self.value = int(mb * MB)
        self.calls = 0

    def set(self, mb: float) -> None:
        self.value = int(mb * MB)

    def __call__(self) -> int:
        self.calls += 1
        return self.value


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def make_monitor(
    readings: Readings, clock: Optional[Clock] = None, limit_mb: float = 64 * 1024, **settings: Any
) -> MemoryMonitor:
    # 1000 / 1200 MB and 5% hysteresis by default: entries at 800 / 1000 / 1200 MB, releases at
    # 760 / 950 / 1140 MB.
    limit = EffectiveLimit(int(limit_mb * MB), "cgroup v2", "/fake/memory.max")
    clock = clock or Clock()
    return MemoryMonitor(
        GuardConfig(**settings),
        probe=MemoryProbe(rss_reader=readings),
        limit_reader=lambda: limit,
        clock=clock,
        wall=clock,
    )


@pytest.fixture
def readings() -> Readings:
    return Readings(500)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monitor(readings: Readings, clock: Clock) -> Iterator[MemoryMonitor]:
    m = make_monitor(readings, clock)
    yield m
    m.stop()


def memory_alerts(m: MemoryMonitor) -> list[tuple[str, str, Level]]:
    return [(a.severity, a.kind, a.level) for a in m.alerts if a.kind in ("memory", "recovered")]


# -- levels and alerts -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mb", "level", "severity"),
    [
        (800, Level.PREVENTIVE, "medium"),
        (1000, Level.HIGH, "high"),
        (1200, Level.CRITICAL, "critical"),
    ],
)
def test_crossing_a_threshold_moves_the_level_on_that_sample(
    monitor: MemoryMonitor, readings: Readings, mb: float, level: Level, severity: str
) -> None:
    readings.set(mb - 0.01)
    assert monitor.sample().level == Level(level - 1)
    before = len(monitor.alerts)
    readings.set(mb)
    assert monitor.sample().level == level
    assert monitor.level == level
    new = monitor.alerts[before:]
    assert [(a.severity, a.kind, a.level) for a in new][-1] == (severity, "memory", level)
    assert new[-1].rss_mb == pytest.approx(mb)


def test_walking_up_raises_each_alert_in_turn(monitor: MemoryMonitor, readings: Readings) -> None:
    for mb in (700, 810, 1010, 1210):
        readings.set(mb)
        monitor.sample()
    assert memory_alerts(monitor) == [
        ("medium", "memory", Level.PREVENTIVE),
        ("high", "memory", Level.HIGH),
        ("critical", "memory", Level.CRITICAL),
    ]


def test_a_jump_goes_straight_to_critical_with_one_alert(
    monitor: MemoryMonitor, readings: Readings
) -> None:
    readings.set(5000)
    assert monitor.sample().level == Level.CRITICAL
    assert memory_alerts(monitor) == [("critical", "memory", Level.CRITICAL)]


def test_hovering_at_a_threshold_does_not_flap(monitor: MemoryMonitor, readings: Readings) -> None:
    readings.set(1000)
    monitor.sample()
    for i in range(50):
        readings.set(1000 - (i % 2) * 49)  # 1000, 951, 1000, 951 ...: never below 950
        assert monitor.sample().level == Level.HIGH
    assert memory_alerts(monitor) == [("high", "memory", Level.HIGH)]


def test_just_below_each_threshold_keeps_the_level(
    monitor: MemoryMonitor, readings: Readings
) -> None:
    for entry, release, level in (
        (800, 760, Level.PREVENTIVE),
        (1000, 950, Level.HIGH),
        (1200, 1140, Level.CRITICAL),
    ):
        readings.set(entry)
        monitor.sample()
        readings.set(entry - 1)
        assert monitor.sample().level == level
        readings.set(release + 0.5)
        assert monitor.sample().level == level


def test_recovery_below_the_release_mark(readings: Readings) -> None:
    monitor = make_monitor(readings, alert_repeat_seconds=0)  # every fall announced at once
    readings.set(1250)
    monitor.sample()
    readings.set(1139)  # below 1140: leave CRITICAL, still HIGH
    assert monitor.sample().level == Level.HIGH
    readings.set(100)
    assert monitor.sample().level == Level.NORMAL
    readings.set(1010)
    monitor.sample()
    readings.set(900)  # 900 < 950: leaves HIGH for PREVENTIVE
    monitor.sample()
    assert memory_alerts(monitor) == [
        ("critical", "memory", Level.CRITICAL),
        ("info", "recovered", Level.HIGH),  # CRITICAL's episode: the only one opened
        ("high", "memory", Level.HIGH),
        ("info", "recovered", Level.PREVENTIVE),
    ]


# -- episodes: one alert when a condition starts, one when it is over ------------------------------
def test_a_level_that_flaps_is_one_episode_and_one_recovery(
    monitor: MemoryMonitor, readings: Readings, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    assert monitor.config.alert_repeat_seconds == 300
    heard: list[Alert] = []
    monitor.add_listener(heard.append)
    with caplog.at_level(logging.INFO, logger="zerorag_guard"):
        for mb in (1210, 1100, 1232, 1100, 1205, 1100, 1201):  # re-enters CRITICAL three times
            readings.set(mb)
            monitor.sample()
            clock.advance(10)
        readings.set(500)  # at t=70 s memory falls for good: back to NORMAL
        monitor.sample()
        clock.advance(299)
        monitor.sample()
        assert [a.kind for a in heard] == ["memory"]  # not over yet: 299 s below
        (episode,) = monitor.get_health_status()["alerts"]["episodes"]["open"]
        assert (episode["level"], episode["repeats"], episode["peak_mb"]) == ("CRITICAL", 3, 1232)
        clock.advance(1)
        monitor.sample()
    assert [(a.severity, a.kind) for a in heard] == [("critical", "memory"), ("info", "recovered")]
    recovered = heard[-1]
    assert recovered.message == (
        "memory at 500.0 MB, back to NORMAL: recovered from CRITICAL after 1 min 10 s, "
        "peak 1,232 MB, re-entered 3 times"
    )
    assert recovered.data == {
        "recovered_from": "CRITICAL",
        "episode_seconds": 70.0,
        "peak_mb": 1232.0,
        "repeats": 3,
    }
    logged = [r.getMessage() for r in caplog.records if r.name == "zerorag_guard"]
    assert sum("entered CRITICAL" in m for m in logged) == 1
    assert sum("recovered" in m for m in logged) == 1
    episodes = monitor.get_health_status()["alerts"]["episodes"]
    assert episodes["open"] == [] and episodes["recent"][-1]["repeats"] == 3
    assert episodes["repeats"] == {"critical": 3}
    assert monitor.get_health_status()["alerts"]["critical"] == 1  # raised once


def test_the_same_alert_after_the_window_opens_a_new_episode(
    monitor: MemoryMonitor, clock: Clock
) -> None:
    for _ in range(3):  # at 0, 100 and 200 s
        monitor.alert("medium", "slow_operation", "ingest took 70 s", operation="ingest")
        clock.advance(100)
    monitor.alert("medium", "slow_operation", "query took 70 s", operation="query")  # another
    clock.advance(99)  # 199 s after the last one
    monitor.alert("medium", "slow_operation", "ingest took 70 s", operation="ingest")
    assert [a.message for a in monitor.alerts] == ["ingest took 70 s", "query took 70 s"]
    clock.advance(300)  # 300 s since the last one: its episode is over
    monitor.sample()
    monitor.alert("medium", "slow_operation", "ingest took 80 s", operation="ingest")
    assert [a.message for a in monitor.alerts][-1] == "ingest took 80 s"
    recent = monitor.get_health_status()["alerts"]["episodes"]["recent"]
    assert [(e["subject"], e["repeats"]) for e in recent] == [("ingest", 3), ("query", 0)]


def test_a_zero_repeat_window_raises_every_alert(readings: Readings) -> None:
    monitor = make_monitor(readings, alert_repeat_seconds=0)
    for _ in range(3):
        monitor.alert("high", "test", "again")
    assert len(monitor.alerts) == 3


def test_alerts_are_logged(
    monitor: MemoryMonitor, readings: Readings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="zerorag_guard"):
        readings.set(1300)
        monitor.sample()
    record = next(r for r in caplog.records if "entered CRITICAL" in r.getMessage())
    assert record.name == "zerorag_guard"
    assert record.levelno == logging.CRITICAL


def test_sampler_thread_moves_the_level_on_the_first_sample_that_sees_it(
    readings: Readings,
) -> None:
    # A real sampler thread, real clock, 10 ms interval. No time is measured (a shared machine
    # may stall a thread for any while): the history shows that the very first sample to see
    # the crossing moved the level, and that none before it did.
    m = MemoryMonitor(
        GuardConfig(sample_interval=0.01),
        probe=MemoryProbe(rss_reader=readings),
        limit_reader=lambda: EffectiveLimit(64 * 1024 * MB, "host", ""),
    )
    got = threading.Event()
    m.add_listener(lambda a: got.set() if a.level == Level.HIGH else None)
    m.start()
    try:
        deadline = time.monotonic() + 10
        while len(m.history) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert m.running and len(m.history) >= 3
        readings.set(1050)
        assert got.wait(10), "the sampler thread never raised the HIGH alert"
        history = m.history
    finally:
        m.stop()
    first_seen = next(s for s in history if s.rss_mb == pytest.approx(1050))
    assert first_seen.level == Level.HIGH
    earlier = [s for s in history if s.time < first_seen.time]
    assert earlier and all(s.level == Level.NORMAL for s in earlier)


# -- listeners -------------------------------------------------------------------------------------
def test_listeners_are_called_and_a_raising_one_is_survived(
    monitor: MemoryMonitor, readings: Readings, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Alert] = []

    def broken(alert: Alert) -> None:
        raise RuntimeError("listener bug")

    monitor.add_listener(broken)
    monitor.add_listener(seen.append)
    with caplog.at_level(logging.ERROR, logger="zerorag_guard"):
        readings.set(1300)
        monitor.sample()
        monitor.tick()
        readings.set(100)
        monitor.sample()
        clock.advance(monitor.config.alert_repeat_seconds)  # the episode is over
        monitor.sample()
    assert [(a.severity, a.kind) for a in seen] == [("critical", "memory"), ("info", "recovered")]
    assert "listener" in caplog.text and "listener bug" in caplog.text
    monitor.remove_listener(seen.append)
    readings.set(900)
    monitor.sample()
    assert len(seen) == 2
    with pytest.raises(TypeError):
        monitor.add_listener("not callable")  # type: ignore[arg-type]


def test_history_is_bounded(readings: Readings) -> None:
    m = make_monitor(readings, history_size=25, alert_history_size=3)
    for i in range(500):
        readings.set(100 + (i % 2) * 2000)  # flaps between NORMAL and CRITICAL: many alerts
        m.sample()
    assert len(m.history) == 25
    assert len(m.alerts) <= 3
    assert m.history[-1].rss_mb == pytest.approx(2100 if 499 % 2 else 100)


# -- operation statistics --------------------------------------------------------------------------
def test_operation_stats(monitor: MemoryMonitor) -> None:
    for seconds in (0.5, 1.5, 1.0):
        monitor.record_operation("embed", seconds, peak_mb=300)
    monitor.record_operation("embed", 2.0, peak_mb=450, error=True)
    stats = monitor.operations()["embed"]
    assert stats["calls"] == 4 and stats["errors"] == 1
    assert stats["error_rate"] == 0.25
    assert stats["avg_seconds"] == pytest.approx(1.25)
    assert stats["max_seconds"] == 2.0 and stats["peak_mb"] == 450.0
    assert monitor.get_health_status()["operations"]["embed"] == stats


def test_slow_operation_alert(monitor: MemoryMonitor) -> None:
    monitor.configure(slow_operation_seconds=10)
    monitor.record_operation("index", 9.9)
    assert not monitor.alerts
    monitor.record_operation("index", 10.5)
    (alert,) = monitor.alerts
    assert (alert.severity, alert.kind, alert.data["operation"]) == (
        "medium",
        "slow_operation",
        "index",
    )


def test_error_rate_alert_once_until_recovered(monitor: MemoryMonitor, clock: Clock) -> None:
    def kinds() -> list[str]:
        return [a.kind for a in monitor.alerts if a.kind == "error_rate"]

    for i in range(9):
        monitor.record_operation("query", 0.1, error=i < 5)
    assert kinds() == []  # fewer than 10 calls: no verdict yet
    monitor.record_operation("query", 0.1)
    assert kinds() == ["error_rate"]  # 5 of 10 > 20%
    assert monitor.alerts[-1].severity == "high"
    for _ in range(5):
        monitor.record_operation("query", 0.1, error=True)
    assert kinds() == ["error_rate"]  # still failing: not repeated
    for _ in range(60):
        monitor.record_operation("query", 0.1)  # 10 of 75 = 13%: recovered
    for _ in range(20):
        monitor.record_operation("query", 0.1, error=True)  # 30 of 95 = 32%: failing again
    assert kinds() == ["error_rate"]  # within the repeat window: counted on its episode
    for _ in range(60):
        monitor.record_operation("query", 0.1)  # 30 of 155 = 19%: recovered
    clock.advance(monitor.config.alert_repeat_seconds)
    for _ in range(30):
        monitor.record_operation("query", 0.1, error=True)  # 60 of 185 = 32%: failing again
    assert kinds() == ["error_rate", "error_rate"]
    health = monitor.get_health_status()
    assert any("operation query fails" in issue for issue in health["health_issues"])


# -- cleanups and cool-downs -----------------------------------------------------------------------
def cleanup_counts(m: MemoryMonitor) -> dict[str, int]:
    # Read without get_health_status(), whose own fresh sample could run a cleanup too.
    with m._lock:
        return m.counters()["cleanups"]


def test_levels_run_their_cleanups_within_cool_downs(readings: Readings, clock: Clock) -> None:
    m = make_monitor(readings, clock, cleanup_cooldown_seconds=5, aggressive_cooldown_seconds=15)
    clock.advance(100)  # the GC budget is measured from the monitor's start
    readings.set(850)
    for _ in range(5):
        m.sample()
    assert cleanup_counts(m)["light"] == 1  # PREVENTIVE: light, once within its cool-down
    clock.advance(5)
    m.sample()
    assert cleanup_counts(m)["light"] == 2
    readings.set(1300)
    for _ in range(3):
        m.sample()
    assert cleanup_counts(m)["aggressive"] == 1  # CRITICAL: aggressive, at once
    clock.advance(10)
    m.sample()
    assert cleanup_counts(m)["aggressive"] == 1  # 10 s < 15 s cool-down
    clock.advance(5)
    m.sample()  # 15 s: due, but the first one freed nothing, so its cool-down doubled
    assert cleanup_counts(m)["aggressive"] == 1
    clock.advance(15)
    m.sample()
    assert cleanup_counts(m)["aggressive"] == 2
    m.stop()


def test_futile_full_cleanups_back_off(readings: Readings, clock: Clock) -> None:
    # At 1,300 MB that no cleanup frees (a loaded model above the thresholds), each futile
    # aggressive cleanup doubles the next one's cool-down (15 s): 30, 60, then 120 s at most.
    m = make_monitor(readings, clock, cleanup_cooldown_seconds=5, aggressive_cooldown_seconds=15)
    clock.advance(100)
    readings.set(1300)
    times = []
    for second in range(400):
        before = cleanup_counts(m)["aggressive"]
        m.sample()
        if cleanup_counts(m)["aggressive"] > before:
            times.append(second)
        clock.advance(1)
    assert times == [0, 30, 90, 210, 330]
    # One that frees memory (a cache it clears gives back 50 MB) resets the cool-down.
    m.register_cache(lambda: readings.set(1250))
    clock.advance(120)
    m.sample()
    assert cleanup_counts(m)["aggressive"] == len(times) + 1
    readings.set(1300)
    clock.advance(15)
    m.sample()
    assert cleanup_counts(m)["aggressive"] == len(times) + 2
    m.stop()


def test_high_level_queues_standard_cleanup_to_the_worker(readings: Readings, clock: Clock) -> None:
    m = make_monitor(readings, clock)
    cleared = threading.Event()
    m.register_cache(cleared.set)
    clock.advance(100)
    readings.set(1050)
    m.sample()
    assert cleared.wait(10), "the queued standard cleanup never ran"
    m.wait_for_cleanups(timeout=10)
    assert cleanup_counts(m)["standard"] == 1
    m.sample()
    m.wait_for_cleanups(timeout=10)
    assert cleanup_counts(m)["standard"] == 1  # within the cool-down
    m.stop()


def test_routine_cleanup_is_skipped_over_the_gc_budget(readings: Readings, clock: Clock) -> None:
    # The clock does not move, so any GC time at all is far over 5% of the elapsed wall time.
    m = make_monitor(readings, clock, cleanup_cooldown_seconds=0)
    readings.set(850)
    m.sample()
    assert cleanup_counts(m)["light"] == 1
    for _ in range(5):
        m.sample()
    assert cleanup_counts(m)["light"] == 1
    assert any("routine GC took" in i for i in m.get_health_status()["health_issues"])
    clock.advance(3600)  # an hour later the share is tiny again
    m.sample()
    assert cleanup_counts(m)["light"] == 2


def test_periodic_gc_every_gc_interval(readings: Readings, clock: Clock) -> None:
    m = make_monitor(readings, clock, gc_interval_seconds=10)
    m.tick()
    clock.advance(9.5)
    m.tick()
    assert cleanup_counts(m)["light"] == 0
    clock.advance(0.5)
    m.tick()
    assert cleanup_counts(m)["light"] == 1
    for _ in range(3):
        clock.advance(5)
        m.tick()
    assert cleanup_counts(m)["light"] == 2  # at 20 s, not at 15 or 25


def test_cleanup_queue_overflow_raises_an_alert(readings: Readings) -> None:
    m = make_monitor(readings, cleanup_queue_size=1)
    entered, release = threading.Event(), threading.Event()

    def blocking_clearer() -> None:
        entered.set()
        release.wait(10)

    m.register_cache(blocking_clearer)
    try:
        assert m.cleanup("standard", wait=False) is None
        assert entered.wait(10)  # the worker is now stuck in the first cleanup
        m.cleanup("standard", wait=False)  # fills the one-slot queue
        assert not [a for a in m.alerts if a.kind == "cleanup_queue_overflow"]
        m.cleanup("standard", wait=False)  # overflows
    finally:
        release.set()
    overflow = [a for a in m.alerts if a.kind == "cleanup_queue_overflow"]
    assert len(overflow) == 1 and overflow[0].severity == "high"
    m.wait_for_cleanups(timeout=10)
    health = m.get_health_status()
    assert any("cleanup queue overflowed 1 times" in i for i in health["health_issues"])
    assert health["cleanups"]["standard"]["count"] == 2
    m.stop()


def test_cleanup_rejects_unknown_strategy(monitor: MemoryMonitor) -> None:
    with pytest.raises(ValueError, match="'deep'"):
        monitor.cleanup("deep")


# -- health ----------------------------------------------------------------------------------------
def test_health_status_keys_and_figures(readings: Readings) -> None:
    clock = Clock()
    m = make_monitor(readings, clock, limit_mb=4096)
    clock.advance(60)
    readings.set(900)
    health = m.get_health_status()
    assert 0 <= health["health_score"] <= 100
    usage = health["memory_usage"]
    assert usage["rss_mb"] == 900.0
    assert usage["limit_mb"] == 4096.0
    assert usage["threshold_mb"] == 1000.0
    assert usage["critical_threshold_mb"] == 1200.0
    assert usage["percent_of_threshold"] == 90.0
    assert usage["level"] == "PREVENTIVE"
    assert isinstance(health["health_issues"], list)
    assert any("PREVENTIVE" in i for i in health["health_issues"])
    for key in ("operations", "alerts", "cleanups", "services", "config", "leak"):
        assert key in health
    assert health["alerts"]["medium"] == 1
    assert health["services"]["probe"] == "injected"
    json.dumps(health)
    readings.set(100)
    healthy = m.get_health_status()
    assert healthy["health_score"] > health["health_score"]
    assert healthy["health_issues"] == []


def test_thresholds_above_the_effective_limit_are_a_health_issue(readings: Readings) -> None:
    m = make_monitor(readings, limit_mb=1100)  # 1000 fits, 1200 does not
    issues = m.get_health_status()["health_issues"]
    assert [i.split("=")[0] for i in issues if "above the effective limit" in i] == [
        "MEMORY_CRITICAL_THRESHOLD_MB"
    ]
    assert "/fake/memory.max" in issues[0]
    m.configure(threshold_mb=1150, critical_threshold_mb=1300)
    issues = m.get_health_status()["health_issues"]
    assert len([i for i in issues if "above the effective limit" in i]) == 2
    fine = make_monitor(readings, limit_mb=8192)
    assert not fine.get_health_status()["health_issues"]


def test_leak_trend_from_after_cleanup_readings(readings: Readings, clock: Clock) -> None:
    m = make_monitor(readings, clock)
    for i in range(6):
        readings.set(200 + 10 * i)  # after every cleanup, 10 MB more than the last: 20 MB/min
        m.cleanup("standard")
        clock.advance(30)
    health = m.get_health_status()
    assert health["leak"] is not None
    assert health["leak"]["slope_mb_per_min"] == pytest.approx(20.0)
    assert any("suspected leak" in i for i in health["health_issues"])

    flat = make_monitor(readings, clock)
    for i in range(6):
        readings.set(300 + (i % 2))  # noise, no trend
        flat.cleanup("standard")
        clock.advance(30)
    assert flat.get_health_status()["leak"] is None


# -- threads and fork ------------------------------------------------------------------------------
@pytest.mark.slow
def test_eight_threads_hammering_one_monitor() -> None:
    m = MemoryMonitor(
        GuardConfig(
            sample_interval=0.005,
            history_size=200,
            cleanup_cooldown_seconds=0,
            aggressive_cooldown_seconds=0.5,
        )
    )
    m.start()
    errors: list[BaseException] = []
    stop = time.monotonic() + 3.0
    counts = [0] * 8

    def work(index: int) -> None:
        rng = random.Random(index)
        try:
            while time.monotonic() < stop:
                action = rng.randrange(10)
                if action < 5:
                    m.sample()
                elif action == 5:
                    m.cleanup("light")
                elif action == 6:
                    m.cleanup("standard", wait=rng.random() < 0.3)
                elif action == 7:
                    # Low thresholds on purpose: real RSS crosses them, so levels move too.
                    main = rng.uniform(20, 200)
                    m.configure(threshold_mb=main, critical_threshold_mb=main * 1.2)
                elif action == 8:
                    m.configure(
                        history_size=rng.choice([50, 100, 200]),
                        cleanup_queue_size=rng.choice([1, 2, 4]),
                    )
                else:
                    m.get_health_status()
                counts[index] += 1
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert not [t for t in threads if t.is_alive()], "a thread is stuck: deadlock"
        assert errors == []
        assert all(c > 0 for c in counts)
        assert m.running, "the sampler thread died"
        assert len(m.history) <= m.config.history_size
        assert len(m.alerts) <= m.config.alert_history_size
    finally:
        m.stop()
    print(f"operations per thread in 3 s: {counts}")


@pytest.mark.system
def test_forked_child_gets_a_working_monitor_of_its_own() -> None:
    parent = get_monitor()
    parent.configure(sample_interval=0.01)
    assert parent.running
    parent_rss = parent.sample().rss_mb

    def child() -> dict[str, Any]:
        import psutil

        m = get_monitor()
        before = m.sample().rss_mb
        block = b"\x01" * (100 * MB)
        mine = m.sample()
        after = mine.rss_mb
        deadline = time.monotonic() + 10
        seen_by_sampler = False
        while time.monotonic() < deadline and not seen_by_sampler:
            time.sleep(0.02)
            seen_by_sampler = any(s.time > mine.time and s.rss_mb >= before + 95 for s in m.history)
        return {
            "pid": os.getpid(),
            "same_monitor": m is parent,
            "running": m.running,
            "thread_alive": m._sampler._thread is not None and m._sampler._thread.is_alive(),
            "before": before,
            "after": after,
            "seen_by_sampler": seen_by_sampler,
            "psutil": psutil.Process().memory_info().rss / MB,
            "len_block": len(block),
        }

    report = in_forked_child(child)
    print(f"parent {os.getpid()} RSS {parent_rss:.1f} MB; child {report}")
    assert report["pid"] != os.getpid()
    # One process-wide monitor: the child's get_monitor() is the object it inherited, with a
    # sampler thread of its own started again by os.register_at_fork.
    assert report["same_monitor"]
    assert report["running"] and report["thread_alive"]
    assert report["after"] - report["before"] >= 95  # the child's own RSS, not the parent's
    assert report["seen_by_sampler"], "the child's sampler thread recorded no sample"
    assert report["after"] == pytest.approx(report["psutil"], rel=0.05)
    # The parent is untouched: its monitor still runs and never saw the child's 100 MB.
    assert parent.running
    assert parent.sample().rss_mb < parent_rss + 50
