"""Settings: the environment, .env files, recommendations, run-time changes and validation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import zerorag_guard
from zerorag_guard import ConfigError, GuardConfig, Level, MemoryMonitor, recommend_config
from zerorag_guard.config import MAX_MB, parse_size_mb
from zerorag_guard.memory.limits import EffectiveLimit
from zerorag_guard.memory.probes import MB, MemoryProbe

FIELDS = {f.name: f for f in dataclasses.fields(GuardConfig)}
ENV = {f.metadata["env"]: f for f in dataclasses.fields(GuardConfig)}


@pytest.fixture
def clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without a .env, and no ZERORAG_GUARD_ variables in the environment."""
    monkeypatch.chdir(tmp_path)
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    return tmp_path


# -- the environment and .env ----------------------------------------------------------------------
def test_defaults_are_the_guides(clean_cwd: Path) -> None:
    cfg = GuardConfig.from_env({})
    assert (cfg.threshold_mb, cfg.critical_threshold_mb) == (1000.0, 1200.0)
    assert (cfg.gc_interval_seconds, cfg.batch_size) == (180.0, 100)
    assert cfg.preventive_threshold_mb == pytest.approx(800.0)
    assert cfg.sample_interval == pytest.approx(0.1)


def test_the_four_guide_variables_are_read(clean_cwd: Path) -> None:
    cfg = GuardConfig.from_env(
        {
            "MEMORY_THRESHOLD_MB": "600",
            "MEMORY_CRITICAL_THRESHOLD_MB": "800",
            "GC_INTERVAL_SECONDS": "120",
            "BATCH_SIZE": "50",
        }
    )
    assert (
        cfg.threshold_mb,
        cfg.critical_threshold_mb,
        cfg.gc_interval_seconds,
        cfg.batch_size,
    ) == (600.0, 800.0, 120.0, 50)
    assert isinstance(cfg.batch_size, int)


def test_os_environ_is_the_default_source(clean_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORY_THRESHOLD_MB", "700")
    monkeypatch.setenv("MEMORY_CRITICAL_THRESHOLD_MB", "0.9 GB")
    cfg = GuardConfig.from_env()
    assert cfg.threshold_mb == 700.0
    assert cfg.critical_threshold_mb == pytest.approx(0.9 * 1024)
    # And the process-wide monitor is built from it.
    assert zerorag_guard.get_monitor().config.threshold_mb == 700.0


def test_prefixed_settings(clean_cwd: Path) -> None:
    cfg = GuardConfig.from_env(
        {
            "ZERORAG_GUARD_SAMPLE_INTERVAL": "0.25",
            "ZERORAG_GUARD_PREVENTIVE_RATIO": "0.7",
            "ZERORAG_GUARD_HISTORY_SIZE": "500",
            "ZERORAG_GUARD_USE_KERNEL_PEAK": "off",
            "ZERORAG_GUARD_HYSTERESIS_RATIO": "0",
        }
    )
    assert cfg.sample_interval == 0.25
    assert cfg.preventive_ratio == 0.7
    assert cfg.preventive_threshold_mb == pytest.approx(700.0)
    assert cfg.history_size == 500
    assert cfg.use_kernel_peak is False
    assert cfg.hysteresis_ratio == 0.0


def test_every_setting_has_an_environment_variable() -> None:
    guide = {
        "MEMORY_THRESHOLD_MB",
        "MEMORY_CRITICAL_THRESHOLD_MB",
        "GC_INTERVAL_SECONDS",
        "BATCH_SIZE",
    }
    assert guide <= set(ENV)
    assert all(v.startswith("ZERORAG_GUARD_") for v in set(ENV) - guide)


def test_unknown_prefixed_variable_is_rejected(clean_cwd: Path) -> None:
    with pytest.raises(ConfigError) as info:
        GuardConfig.from_env({"ZERORAG_GUARD_SAMPLE_INTERVALL": "0.2"})
    assert "ZERORAG_GUARD_SAMPLE_INTERVALL='0.2'" in str(info.value)
    assert "ZERORAG_GUARD_SAMPLE_INTERVAL" in info.value.expected  # the known names are listed
    # Variables without the prefix are none of our business.
    GuardConfig.from_env({"SOME_OTHER_TOOL_SETTING": "x"})


def test_dotenv_path(clean_cwd: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text(
        "MEMORY_THRESHOLD_MB=600\nMEMORY_CRITICAL_THRESHOLD_MB=800\n# a comment\nBATCH_SIZE=50\n"
    )
    cfg = GuardConfig.from_env({}, dotenv_path=env_file)
    assert (cfg.threshold_mb, cfg.critical_threshold_mb, cfg.batch_size) == (600.0, 800.0, 50)


def test_missing_dotenv_path_is_an_error(clean_cwd: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dotenv_path"):
        GuardConfig.from_env({}, dotenv_path=tmp_path / "nope.env")


def test_dotenv_in_cwd_is_read_and_the_environment_wins(clean_cwd: Path) -> None:
    (clean_cwd / ".env").write_text(
        "MEMORY_THRESHOLD_MB=600\nMEMORY_CRITICAL_THRESHOLD_MB=800\nGC_INTERVAL_SECONDS=120\n"
    )
    from_file = GuardConfig.from_env({})
    assert (from_file.threshold_mb, from_file.gc_interval_seconds) == (600.0, 120.0)
    mixed = GuardConfig.from_env({"GC_INTERVAL_SECONDS": "30"})
    assert mixed.gc_interval_seconds == 30.0  # the environment wins...
    assert mixed.threshold_mb == 600.0  # ... and the file fills in the rest


def test_bad_value_in_dotenv_names_the_variable(clean_cwd: Path) -> None:
    (clean_cwd / ".env").write_text("BATCH_SIZE=lots\n")
    with pytest.raises(ConfigError, match="BATCH_SIZE='lots'"):
        GuardConfig.from_env({})


def test_sizes_take_units() -> None:
    assert parse_size_mb("512") == 512.0
    assert parse_size_mb("1.5 GB") == 1536.0
    assert parse_size_mb("2GiB") == 2048.0
    assert parse_size_mb("512 KB") == 0.5
    assert parse_size_mb(300) == 300.0
    with pytest.raises(ConfigError, match="'12 parsecs'"):
        parse_size_mb("12 parsecs")


# -- recommendations -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("total_mb", "expected"),
    [
        (4 * 1024, (600.0, 800.0, 50, 120.0)),
        (6 * 1024, (600.0, 800.0, 50, 120.0)),
        (8 * 1024, (1000.0, 1200.0, 100, 180.0)),
        ("8 GB", (1000.0, 1200.0, 100, 180.0)),
        (16 * 1024, (1200.0, 1500.0, 150, 300.0)),
        (64 * 1024, (1200.0, 1500.0, 150, 300.0)),
        (2 * 1024, (300.0, 400.0, 25, 120.0)),
        (1024, (150.0, 200.0, 12, 120.0)),
    ],
)
def test_recommend_config_table(total_mb: Any, expected: tuple[float, float, int, float]) -> None:
    cfg = recommend_config(total_mb)
    assert (
        cfg.threshold_mb,
        cfg.critical_threshold_mb,
        cfg.batch_size,
        cfg.gc_interval_seconds,
    ) == pytest.approx(expected)


def test_recommendation_below_4gb_stays_inside_the_memory() -> None:
    for total in (256, 512, 1024, 3 * 1024, 4095):
        cfg = recommend_config(total)
        assert cfg.critical_threshold_mb <= 0.2 * total  # well inside the memory there is
        assert cfg.threshold_mb < cfg.critical_threshold_mb
        assert cfg.batch_size >= 1


@pytest.mark.parametrize("bad", [0, -1, "lots", float("nan")])
def test_recommend_config_rejects_nonsense(bad: Any) -> None:
    with pytest.raises(ConfigError, match="total_mb"):
        recommend_config(bad)


# -- run-time changes ------------------------------------------------------------------------------
class Readings:
    def __init__(self, mb: float) -> None:
        self.value = int(mb * MB)

    def set(self, mb: float) -> None:
        self.value = int(mb * MB)

    def __call__(self) -> int:
        return self.value


def _monitor(readings: Readings) -> MemoryMonitor:
    limit = EffectiveLimit(64 * 1024 * MB, "host", "fake")
    clock = iter(range(1_000_000, 2_000_000)).__next__
    return MemoryMonitor(
        GuardConfig(),
        probe=MemoryProbe(rss_reader=readings),
        limit_reader=lambda: limit,
        clock=lambda: float(clock()),
    )


def test_configure_moves_the_level_on_the_next_sample() -> None:
    readings = Readings(900)
    monitor = _monitor(readings)
    assert monitor.sample().level == Level.PREVENTIVE  # 900 MB: above 800, below 1000
    monitor.configure(threshold_mb=850, critical_threshold_mb=1000)
    assert monitor.sample().level == Level.HIGH  # same reading, new thresholds, no restart
    monitor.configure(threshold_mb=2000, critical_threshold_mb=3000)
    assert monitor.sample().level == Level.NORMAL


def test_configure_is_validated_and_keeps_the_old_settings() -> None:
    monitor = _monitor(Readings(100))
    before = monitor.config
    with pytest.raises(ConfigError, match="MEMORY_CRITICAL_THRESHOLD_MB"):
        monitor.configure(threshold_mb=900, critical_threshold_mb=800)
    with pytest.raises(ConfigError, match="ZERORAG_GUARD_SAMPLE_INTERVAL=-1"):
        monitor.configure(sample_interval=-1)
    with pytest.raises(ConfigError, match="no_such_setting"):
        monitor.configure(no_such_setting=1)
    assert monitor.config is before


def test_module_level_configure_changes_the_global_monitor(clean_cwd: Path) -> None:
    new = zerorag_guard.configure(threshold_mb="1.5 GB", critical_threshold_mb="2 GB")
    assert zerorag_guard.get_monitor().config is new
    assert new.threshold_mb == 1536.0
    with pytest.raises(ConfigError):
        zerorag_guard.configure(batch_size=0)
    assert zerorag_guard.get_monitor().config is new


# -- validation, by hypothesis ---------------------------------------------------------------------
# Characters that make any string not a number, whatever else it holds.
_JUNK = "!@#$%^&*()[]{}<>?/\\|~`,;:'\""
garbage = st.text(min_size=1, max_size=12).filter(lambda s: any(c in _JUNK for c in s))
letters = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ _-", min_size=1, max_size=10)
non_finite = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "Infinity", float("nan"), float("inf"), float("-inf")]
)
negative = st.one_of(
    st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False), st.integers(max_value=-1)
)


def _numeric_bad(name: str) -> st.SearchStrategy[Any]:
    meta = FIELDS[name].metadata
    kinds = [
        garbage,
        letters,
        non_finite,
        negative,
        negative.map(str),
        st.sampled_from([True, False]),
        st.sampled_from([None, [], {}, object()]),
    ]
    if not meta["low_inclusive"] or meta["low"] > 0:
        kinds.append(st.sampled_from([0, 0.0, "0", " 0 "]))
    if meta["low"] > 0:
        below = st.floats(min_value=-1e6, max_value=meta["low"], exclude_max=True, allow_nan=False)
        if meta["kind"] is int:
            below = st.integers(min_value=-(10**6), max_value=int(meta["low"]) - 1)
        kinds.append(below)
    too_big = st.floats(
        min_value=meta["high"] * 1.01 + 1, max_value=1e300, allow_nan=False, allow_infinity=False
    )
    kinds += [too_big, too_big.map(repr)]
    if meta["kind"] is int:
        kinds.append(st.floats(min_value=1.01, max_value=1e6).filter(lambda x: not x.is_integer()))
        kinds.append(st.sampled_from(["2.5", "1e3", "10 items", "9999999999999"]))
    if name.endswith("_mb"):
        kinds.append(st.sampled_from(["100 TB", "1e9", "65 TiB", "12 parsecs", "MB", "1.5 GBs"]))
    return st.one_of(kinds)


def _bool_bad() -> st.SearchStrategy[Any]:
    spelled = {"1", "0", "true", "false", "yes", "no", "on", "off"}
    return st.one_of(
        st.text(max_size=8).filter(lambda s: s.strip().lower() not in spelled),
        st.integers().filter(lambda i: i not in (0, 1)),
        st.floats(allow_nan=True),
        st.sampled_from([None, [], 2.5]),
    )


def _bad_setting(name: str) -> st.SearchStrategy[tuple[str, Any]]:
    bad = _bool_bad() if FIELDS[name].metadata["kind"] is bool else _numeric_bad(name)
    return bad.map(lambda value: (name, value))


bad_settings = st.one_of([_bad_setting(name) for name in FIELDS])


def _assert_names_it(err: ConfigError, variable: str, value: Any) -> None:
    assert err.variable == variable
    assert f"{variable}={value!r}" in str(err)
    assert "expected" in str(err)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_settings)
def test_every_malformed_setting_is_a_config_error(bad: tuple[str, Any]) -> None:
    name, value = bad
    variable = FIELDS[name].metadata["env"]
    # By keyword, as configure() passes it ...
    try:
        GuardConfig(**{name: value})
    except ConfigError as err:
        _assert_names_it(err, variable, value)
    else:
        pytest.fail(f"GuardConfig({name}={value!r}) was accepted")
    # ... and as text from the environment, where it can be written as text.
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = value if isinstance(value, str) else repr(value)
        if "\x00" in text or "\n" in text or "\r" in text:
            return
        try:
            GuardConfig.from_env({variable: text})
        except ConfigError as err:
            _assert_names_it(err, variable, text)
        else:
            pytest.fail(f"{variable}={text!r} from the environment was accepted")


@settings(max_examples=200, deadline=None)
@given(main=st.floats(min_value=1, max_value=MAX_MB), ratio=st.floats(min_value=0.0, max_value=1.0))
def test_critical_at_or_below_main_is_a_config_error(main: float, ratio: float) -> None:
    critical = main * ratio
    if critical <= 0:
        critical = main
    assume(critical != 1200.0)  # the default critical: the main threshold is named (test below)
    with pytest.raises(ConfigError) as info:
        GuardConfig(threshold_mb=main, critical_threshold_mb=critical)
    _assert_names_it(info.value, "MEMORY_CRITICAL_THRESHOLD_MB", critical)
    with pytest.raises(ConfigError) as info:
        GuardConfig.from_env(
            {"MEMORY_THRESHOLD_MB": repr(main), "MEMORY_CRITICAL_THRESHOLD_MB": repr(critical)}
        )
    _assert_names_it(info.value, "MEMORY_CRITICAL_THRESHOLD_MB", repr(critical))


@pytest.mark.parametrize("main", ["1200", "1200.0", "2 GB", "5000"])
def test_main_moved_past_the_default_critical_names_main(main: str) -> None:
    # Only MEMORY_THRESHOLD_MB was set: the error names it, not the default the user never saw.
    with pytest.raises(ConfigError) as info:
        GuardConfig.from_env({"MEMORY_THRESHOLD_MB": main})
    _assert_names_it(info.value, "MEMORY_THRESHOLD_MB", main)
    assert "MEMORY_CRITICAL_THRESHOLD_MB (1200 MB, its default)" in str(info.value)
    # The same at run time, and the live settings are left as they were.
    monitor = MemoryMonitor(GuardConfig())
    with pytest.raises(ConfigError) as info:
        monitor.configure(threshold_mb=main)
    assert info.value.variable == "MEMORY_THRESHOLD_MB"
    assert monitor.config == GuardConfig()
    # Both moved: the critical one, as given, is named.
    with pytest.raises(ConfigError) as info:
        GuardConfig.from_env({"MEMORY_THRESHOLD_MB": main, "MEMORY_CRITICAL_THRESHOLD_MB": "1100"})
    _assert_names_it(info.value, "MEMORY_CRITICAL_THRESHOLD_MB", "1100")


@settings(max_examples=100, deadline=None)
@given(bad=bad_settings)
def test_configure_rejects_what_the_environment_rejects(bad: tuple[str, Any]) -> None:
    monitor = _CONFIGURE_TARGET
    before = monitor.config
    name, value = bad
    with pytest.raises(ConfigError) as info:
        monitor.configure(**{name: value})
    _assert_names_it(info.value, FIELDS[name].metadata["env"], value)
    assert monitor.config is before


_CONFIGURE_TARGET = _monitor(Readings(100))


def test_good_values_are_not_rejected_by_the_generators_rules() -> None:
    # Guards the hypothesis tests above against passing vacuously: the same code accepts the
    # well-formed spellings of every setting.
    cfg = GuardConfig(
        **{
            name: (f.default if not isinstance(f.default, float) else f"{f.default!r}")
            for name, f in FIELDS.items()
        }
    )
    for name, f in FIELDS.items():
        got = getattr(cfg, name)
        assert got == f.default or math.isclose(got, f.default)
