"""The pytest plugin, driven through real pytest sessions (pytester) with deterministic allocations
on both sides of every limit: ``b"x" * n`` writes every byte, so RSS rises by exactly that much."""

from __future__ import annotations

import json
import textwrap

import pytest

from zerorag_guard.memory.probes import MemoryProbe

pytest_plugins = ["pytester"]

BUDGET_TESTS = """
import pytest

MB = 2**20

@pytest.mark.memory_budget(increase_mb="60 MB")
def test_under():
    data = b"x" * (10 * MB)
    assert len(data) == 10 * MB

@pytest.mark.memory_budget(increase_mb=60)
def test_over():
    data = b"x" * (150 * MB)  # the big one
    assert len(data) == 150 * MB
"""


@pytest.fixture
def ini(pytester: pytest.Pytester) -> pytest.Pytester:
    # The inner sessions get their own ini: pytest-asyncio warns without a loop scope.
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def test_increase_limit_passes_under_and_fails_over_with_report(ini: pytest.Pytester) -> None:
    ini.makepyfile(test_inner_budget=BUDGET_TESTS)
    result = ini.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*memory budget exceeded: peak RSS rose 1[45]?.* MB over the test's start*"
            "over the increase limit of 60.0 MB (@pytest.mark.memory_budget(increase_mb=60))",
            "*start * MB, peak * MB (+1[45]?.* MB), end * MB*",
            "top allocation sites near the peak (tracemalloc):",
            '*150.0 MB in 1 blocks at test_inner_budget.py:*: data = b"x" * (150 * MB)  # the big*',
        ]
    )
    assert "test_under" not in result.stdout.str().split("FAILURES")[-1]


def test_absolute_limit_as_a_string(ini: pytest.Pytester) -> None:
    # In-process runs share this process's RSS: the limit sits 100 MB above it.
    limit = MemoryProbe(use_kernel_peak=False).rss_mb() + 100
    ini.makepyfile(
        test_limit=f"""
        import pytest

        @pytest.mark.memory_budget("{limit:.0f} MB")
        def test_under():
            assert len(b"x" * (10 * 2**20))

        @pytest.mark.memory_budget(limit_mb="{limit:.0f} MB")
        def test_over():
            assert len(b"x" * (250 * 2**20))
        """
    )
    result = ini.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [f"*memory budget exceeded: peak RSS * MB is over the limit of {limit:.0f}.0 MB*"]
    )


def test_no_leaks_fails_a_leak_and_passes_a_warming_cache(ini: pytest.Pytester) -> None:
    ini.makepyfile(
        test_inner_leaks="""
        import functools
        import pytest

        HELD = []

        @functools.lru_cache(maxsize=None)
        def table(n):
            return [bytearray(1000) for _ in range(n)]

        @pytest.mark.no_leaks(iterations=5, warmup=2)
        def test_leaking():
            HELD.append(bytearray(100_000))

        @pytest.mark.no_leaks(iterations=5, warmup=2, max_growth_kb="4 KB")
        def test_cache_warming():
            assert len(table(500)) == 500
        """
    )
    result = ini.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*no_leaks: memory grows with every run of the test body",
            "LEAK: Python memory grows +9?.* KB per iteration",
            "where it was allocated:",
            "*test_inner_leaks.py:*: HELD.append(bytearray(100_000))",
            "FAILED test_inner_leaks.py::test_leaking - *",
        ]
    )


def test_unknown_or_bad_marker_arguments_are_usage_errors(ini: pytest.Pytester) -> None:
    ini.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.memory_budget(limit=100)
        def test_unknown_name():
            pass

        @pytest.mark.memory_budget()
        def test_no_limit():
            pass

        @pytest.mark.memory_budget("lots")
        def test_bad_size():
            pass

        @pytest.mark.no_leaks(repeat=3)
        def test_unknown_leak_arg():
            pass

        @pytest.mark.no_leaks(iterations=1)
        def test_too_few_iterations():
            pass
        """
    )
    result = ini.runpytest()
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines_random(
        [
            "*usage error: @pytest.mark.memory_budget(limit=100) is not valid: "
            "got an unexpected keyword argument 'limit'; "
            "it takes memory_budget(limit_mb=None, increase_mb=None)",
            "*usage error: @pytest.mark.memory_budget() is not valid: "
            "give limit_mb, increase_mb or both*",
            "*usage error: @pytest.mark.memory_budget('lots') is not valid: "
            "limit_mb='lots' is not valid: expected a size in MB*",
            "*usage error: @pytest.mark.no_leaks(repeat=3) is not valid: "
            "got an unexpected keyword argument 'repeat'*",
            "*usage error: @pytest.mark.no_leaks(iterations=1) is not valid: "
            "iterations=1 is not valid*",
        ]
    )


def test_markers_are_registered_with_their_docs(ini: pytest.Pytester) -> None:
    result = ini.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.memory_budget(limit_mb=None, increase_mb=None): fail the test when*",
            "@pytest.mark.no_leaks(iterations=10, warmup=3, max_growth_kb=1): run the test body*",
        ]
    )
    # --strict-markers: the markers are known, so using them is no error.
    ini.makepyfile("import pytest\n@pytest.mark.no_leaks\ndef test_x():\n    pass\n")
    ini.runpytest("--strict-markers").assert_outcomes(passed=1)


def test_memory_report_prints_each_tests_figures(ini: pytest.Pytester) -> None:
    ini.makepyfile(
        test_report="""
        def test_holds():
            test_holds.kept = b"x" * (40 * 2**20)

        def test_nothing():
            pass
        """
    )
    result = ini.runpytest("--memory-report")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= memory report (zerorag_guard) =*",
            "test * peak MB * increase * growth",
            "test_report.py::test_holds * +[34]?.? * +[34]?.?",
            "test_report.py::test_nothing * +*",
        ]
    )
    assert "memory report" not in ini.runpytest().stdout.str()
    ini.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\nmemory_report = true\n")
    ini.runpytest().stdout.fnmatch_lines(["*= memory report (zerorag_guard) =*"])


@pytest.mark.parametrize("where", ["option", "ini"])
def test_default_budget_applies_to_unmarked_tests(pytester: pytest.Pytester, where: str) -> None:
    ini = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    args: list[str] = []
    if where == "ini":
        ini += "memory_budget_default = +60 MB\n"
    else:
        args = ["--memory-budget-default=+60 MB"]
    pytester.makeini(ini)
    pytester.makepyfile(
        test_default="""
        import pytest

        def test_small():
            assert len(b"x" * (10 * 2**20))

        def test_big():
            assert len(b"x" * (150 * 2**20))

        @pytest.mark.memory_budget(increase_mb=300)
        def test_big_but_marked():
            assert len(b"x" * (150 * 2**20))
        """
    )
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*over the increase limit of 60.0 MB (--memory-budget-default)",
            "*(no allocation sites: they are traced for tests marked*",
            "FAILED test_default.py::test_big - *",
        ]
    )


def test_bad_default_budget_is_a_usage_error(ini: pytest.Pytester) -> None:
    ini.makepyfile("def test_x():\n    pass\n")
    result = ini.runpytest("--memory-budget-default=plenty")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--memory-budget-default='plenty' is not valid: expected*"])


def test_async_test_under_the_marker(ini: pytest.Pytester) -> None:
    ini.makepyfile(
        test_async="""
        import asyncio
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.memory_budget(increase_mb=60)
        async def test_under():
            data = b"x" * (10 * 2**20)
            await asyncio.sleep(0)
            assert data

        @pytest.mark.asyncio
        @pytest.mark.memory_budget(increase_mb=60)
        async def test_over():
            data = b"x" * (150 * 2**20)
            await asyncio.sleep(0)
            assert data

        @pytest.mark.asyncio
        @pytest.mark.no_leaks(iterations=4, warmup=1)
        async def test_leaks_async():
            test_leaks_async.__dict__.setdefault("held", []).append(bytearray(100_000))
            await asyncio.sleep(0)
        """
    )
    result = ini.runpytest()
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            '*test_async.py:*: data = b"x" * (150 * 2**20)',
            "*LEAK: Python memory grows*",
        ]
    )


def test_xdist_workers_measure_and_the_controller_reports(ini: pytest.Pytester) -> None:
    ini.makepyfile(test_inner_budget=BUDGET_TESTS)
    result = ini.runpytest_subprocess("-p", "xdist", "-n", "2", "--memory-report")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*memory budget exceeded: peak RSS rose*over the increase limit of 60.0 MB*",
            "*150.0 MB in 1 blocks at test_inner_budget.py:*: data*",
            "test_inner_budget.py::test_over * +1[45]?.? *",
            "test_inner_budget.py::test_under * +*",
        ]
    )


def test_benchmark_json_carries_peak_and_growth(ini: pytest.Pytester) -> None:
    ini.makepyfile(
        test_bench="""
        def test_allocates(benchmark):
            test_allocates.kept = []
            benchmark.pedantic(
                lambda: test_allocates.kept.append(b"x" * (30 * 2**20)), rounds=2, iterations=1
            )
        """
    )
    out = ini.path / "bench.json"
    # In a process of its own: in this one, memory earlier tests freed may still be resident,
    # and glibc (its mmap threshold raised by frees of large blocks) may serve 30 MB from it.
    result = ini.runpytest_subprocess(f"--benchmark-json={out}")
    result.assert_outcomes(passed=1)
    (bench,) = json.loads(out.read_text())["benchmarks"]
    extra = bench["extra_info"]
    assert extra["rss_growth_mb"] >= 55  # two rounds of 30 MB, still held
    assert extra["peak_rss_mb"] >= extra["rss_growth_mb"]


def test_fixtures(ini: pytest.Pytester) -> None:
    ini.makeconftest(
        textwrap.dedent(
            """
            import pytest

            seen = {}

            @pytest.fixture(autouse=True, scope="session")
            def _check_after():
                yield
                assert not seen["monitor"].running
            """
        )
    )
    ini.makepyfile(
        test_fixtures="""
        from zerorag_guard import LeakProfiler, MemoryMonitor, get_monitor
        from zerorag_guard.monitor.process import _reset_global_for_tests
        from conftest import seen

        def test_monitor(memory_monitor):
            assert isinstance(memory_monitor, MemoryMonitor)
            assert memory_monitor is not get_monitor()
            # The process-wide sampler would fill its history under the next test's profiler.
            _reset_global_for_tests()
            memory_monitor.start()
            assert memory_monitor.sample().rss_mb > 0
            seen["monitor"] = memory_monitor

        def test_profiler(leak_profiler):
            assert isinstance(leak_profiler, LeakProfiler)
            assert not leak_profiler.check(lambda: None).leaking
        """
    )
    ini.runpytest().assert_outcomes(passed=2)


def test_unmarked_tests_without_options_are_left_alone(ini: pytest.Pytester) -> None:
    ini.makepyfile("def test_a():\n    pass\n\ndef test_b():\n    assert len(b'x' * 1000)\n")
    reprec = ini.inline_run()
    reprec.assertoutcome(passed=2)
    config = reprec.getcall("pytest_collection_modifyitems").config
    plugin = config.pluginmanager.get_plugin("zerorag_guard_manager")
    assert plugin is not None and plugin.results == []
    assert plugin._probe is None  # no probe opened, so the kernel's peak mark never reset
