"""pytest plugin (entry point ``pytest11``): memory budgets and leak checks for tests.

- ``@pytest.mark.memory_budget(limit_mb=None, increase_mb=None)`` fails a test whose peak RSS
  passes ``limit_mb``, or rises more than ``increase_mb`` over its start, with the peak, the limit
  and the top allocation sites; sizes are MB or strings such as ``"200 MB"``.
- ``@pytest.mark.no_leaks(iterations=10, warmup=3, max_growth_kb=1)`` runs the test body under
  :class:`~zerorag_guard.LeakProfiler` and fails with its report when memory keeps growing.
- fixtures ``memory_monitor`` (a fresh monitor of its own) and ``leak_profiler``;
- ``--memory-report`` (a table of every test's peak and growth), ``--memory-budget-default``
  (a budget for every test), each with an ini twin;
- with pytest-benchmark, a benchmark's peak RSS and growth go into ``benchmark.extra_info``.

The plugin is loaded in every pytest run of anyone who installs the package, so a test with no
marker, no option and no ``benchmark`` fixture costs one stash lookup per hook and nothing else.
Peaks are the kernel's high-water mark over the test's call (see
:meth:`~zerorag_guard.memory.probes.MemoryProbe.open_window`): exact, spikes between samples
included.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest

from ..config import parse_size_mb
from ..errors import ConfigError
from ..leaks.profiler import LeakProfiler
from ..memory.probes import MB, MemoryProbe
from ..monitor.monitor import MemoryMonitor
from .report import SiteTracer, TestMemory, table

SIZE = "a size in MB such as 200 or a string such as '200 MB' or '1.5 GB'"


# The marker signatures: pytest registers their docstrings, and marker arguments are bound to
# them, so an unknown or missing argument is an error that names the right form.
def memory_budget_marker(
    limit_mb: Any = None, increase_mb: Any = None
) -> dict[str, Optional[float]]:
    """memory_budget(limit_mb=None, increase_mb=None): fail the test when its peak RSS passes
    limit_mb, or rises more than increase_mb over its start; sizes in MB or as '200 MB'. The
    report shows the peak, the limit and the top allocation sites."""
    if limit_mb is None and increase_mb is None:
        raise ValueError("give limit_mb, increase_mb or both")
    return {
        "limit_mb": None if limit_mb is None else parse_size_mb(limit_mb, "limit_mb", SIZE),
        "increase_mb": (
            None if increase_mb is None else parse_size_mb(increase_mb, "increase_mb", SIZE)
        ),
    }


def no_leaks_marker(
    iterations: int = 10, warmup: int = 3, max_growth_kb: Any = 1
) -> dict[str, Any]:
    """no_leaks(iterations=10, warmup=3, max_growth_kb=1): run the test body warmup +
    3 x iterations + 1 times under zerorag_guard's LeakProfiler and fail with its report when
    memory grows by max_growth_kb or more per iteration, consistently."""
    mb = parse_size_mb(max_growth_kb, "max_growth_kb", "KB per iteration, e.g. 1 or '4 KB'")
    if isinstance(max_growth_kb, (int, float)):
        mb /= 1024  # a bare number is KB here, not MB
    settings: dict[str, Any] = {
        "iterations": iterations,
        "warmup": warmup,
        "threshold_bytes": mb * MB,
    }
    LeakProfiler(**settings)  # validates: ValueError names the bad argument
    return settings


MARKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "memory_budget": memory_budget_marker,
    "no_leaks": no_leaks_marker,
}


@dataclass
class Plan:
    """What the plugin does for one test, decided once at collection."""

    limit_mb: Optional[float] = None
    increase_mb: Optional[float] = None
    budget_source: str = ""
    sites: bool = False
    leaks: Optional[dict[str, Any]] = None
    benchmark: bool = False
    error: Optional[str] = None


_PLAN = pytest.StashKey[Plan]()
_MEASURED = pytest.StashKey[TestMemory]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("zerorag_guard", "memory budgets and leak checks (zerorag_guard)")
    group.addoption(
        "--memory-report",
        action="store_true",
        default=None,
        help="show a table of every test's peak RSS, increase and growth (ini: memory_report)",
    )
    parser.addini("memory_report", "show the memory table (see --memory-report)", type="bool")
    group.addoption(
        "--memory-budget-default",
        default=None,
        metavar="SIZE",
        help="a memory budget for every test without a memory_budget marker: '500 MB' limits "
        "peak RSS, '+100 MB' the rise over the test's start (ini: memory_budget_default)",
    )
    parser.addini("memory_budget_default", "see --memory-budget-default", default=None)


def pytest_configure(config: pytest.Config) -> None:
    for name, func in MARKERS.items():
        config.addinivalue_line("markers", " ".join((func.__doc__ or name).split()))
    config.pluginmanager.register(MemoryPlugin(config), "zerorag_guard_manager")


def _default_budget(config: pytest.Config) -> tuple[Optional[float], Optional[float]]:
    raw = config.getoption("memory_budget_default") or config.getini("memory_budget_default")
    if not raw:
        return None, None
    text = str(raw).strip()
    try:
        if text.startswith("+"):
            return None, parse_size_mb(text[1:].strip(), "--memory-budget-default", SIZE)
        return parse_size_mb(text, "--memory-budget-default", SIZE), None
    except ConfigError as exc:
        raise pytest.UsageError(f"{exc}; prefix '+' to limit the rise instead") from None


def _call_text(mark: pytest.Mark) -> str:
    args = [repr(a) for a in mark.args] + [f"{k}={v!r}" for k, v in mark.kwargs.items()]
    return f"@pytest.mark.{mark.name}({', '.join(args)})"


def _bind(mark: pytest.Mark) -> dict[str, Any]:
    func = MARKERS[mark.name]
    try:
        inspect.signature(func).bind(*mark.args, **mark.kwargs)
        return func(*mark.args, **mark.kwargs)
    except (TypeError, ValueError) as exc:
        usage = (func.__doc__ or "").split(":")[0]
        raise ValueError(f"{_call_text(mark)} is not valid: {exc}; it takes {usage}") from None


class MemoryPlugin:
    """The per-session manager: plans each test at collection, measures the tests that need it,
    checks budgets and leaks, and gathers the figures for the report (from xdist workers too)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.report = bool(config.getoption("memory_report") or config.getini("memory_report"))
        self.default_limit, self.default_increase = _default_budget(config)
        self.results: list[TestMemory] = []
        self._probe: Optional[MemoryProbe] = None

    @property
    def probe(self) -> MemoryProbe:
        if self._probe is None:  # opened on the first measured test, never in an unmeasured run
            self._probe = MemoryProbe()
        return self._probe

    def _plan(self, item: pytest.Item) -> Optional[Plan]:
        plan = Plan(benchmark="benchmark" in getattr(item, "fixturenames", ()))
        try:
            budget = item.get_closest_marker("memory_budget")
            if budget is not None:
                bound = _bind(budget)
                plan.limit_mb, plan.increase_mb = bound["limit_mb"], bound["increase_mb"]
                plan.budget_source, plan.sites = _call_text(budget), True
            elif self.default_limit is not None or self.default_increase is not None:
                plan.limit_mb, plan.increase_mb = self.default_limit, self.default_increase
                plan.budget_source = "--memory-budget-default"
            leaks = item.get_closest_marker("no_leaks")
            if leaks is not None:
                plan.leaks = _bind(leaks)
        except ValueError as exc:
            plan.error = str(exc)
        if plan.budget_source or plan.leaks or plan.benchmark or plan.error or self.report:
            return plan
        return None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            plan = self._plan(item)
            if plan is not None:
                item.stash[_PLAN] = plan

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        plan = item.stash.get(_PLAN, None)
        if plan is not None and plan.error:
            pytest.fail(f"usage error: {plan.error}", pytrace=False)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        plan = item.stash.get(_PLAN, None)
        if plan is None or (plan.leaks is not None and not (plan.budget_source or self.report)):
            return (yield)  # nothing to measure (no_leaks measures itself)
        tracer = SiteTracer() if plan.sites else None
        window = self.probe.open_window()
        start = self.probe.rss_bytes()
        if tracer is not None:
            tracer.start()
        try:
            result = yield
        finally:
            sites = tracer.stop() if tracer is not None else []
            peak = window.close()
            tracer_bytes = tracer.overhead_bytes if tracer is not None else 0
            measured = TestMemory(
                item.nodeid,
                start / MB,
                max(start, peak - tracer_bytes) / MB,
                self.probe.rss_bytes() / MB,
                round(tracer_bytes / MB, 1),
                sites,
            )
            item.stash[_MEASURED] = measured
            _to_benchmark(item, measured)
        why = measured.over_budget(plan.limit_mb, plan.increase_mb)
        if why is not None:
            pytest.fail(measured.failure(why, plan.budget_source), pytrace=False)
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Optional[bool]:
        plan = pyfuncitem.stash.get(_PLAN, None)
        if plan is None or plan.leaks is None:
            return None
        func = pyfuncitem.obj
        if inspect.iscoroutinefunction(func):
            return None  # no async plugin turned it into a call: let pytest say so
        names = pyfuncitem._fixtureinfo.argnames
        kwargs = {name: pyfuncitem.funcargs[name] for name in names}
        found = LeakProfiler(**plan.leaks).check(func, **kwargs)
        if found.leaking:
            pytest.fail(
                f"no_leaks: memory grows with every run of the test body\n{found.format()}",
                pytrace=False,
            )
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        measured = item.stash.get(_MEASURED, None) if call.when == "call" else None
        if measured is not None:
            # A plain attribute travels with the report from xdist workers to the controller.
            report.zerorag_memory = measured.to_dict()  # type: ignore[attr-defined]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "zerorag_memory", None)
        if self.report and data is not None and report.when == "call":
            self.results.append(TestMemory.from_dict(data))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.report or hasattr(self.config, "workerinput"):
            return
        terminalreporter.write_sep("=", "memory report (zerorag_guard)")
        for line in table(self.results):
            terminalreporter.write_line(line)

    def pytest_unconfigure(self) -> None:
        if self._probe is not None:
            self._probe.close()


def _to_benchmark(item: pytest.Item, measured: TestMemory) -> None:
    """Put the peak and growth next to the time in pytest-benchmark's JSON."""
    bench = getattr(item, "funcargs", {}).get("benchmark")
    extra = getattr(bench, "extra_info", None)
    if isinstance(extra, dict):
        extra["peak_rss_mb"] = round(measured.peak_mb, 1)
        extra["rss_growth_mb"] = round(measured.growth_mb, 1)


@pytest.fixture
def memory_monitor() -> Iterator[MemoryMonitor]:
    """A fresh :class:`~zerorag_guard.MemoryMonitor` of the test's own, not the process-wide
    one: not started (call ``start()`` for the sampler), stopped and closed after the test."""
    monitor = MemoryMonitor()
    try:
        yield monitor
    finally:
        monitor.stop()
        monitor.probe.close()


@pytest.fixture
def leak_profiler() -> LeakProfiler:
    """A :class:`~zerorag_guard.LeakProfiler` with the default settings:
    ``leak_profiler.check(fn, *args)`` or ``with leak_profiler: ... leak_profiler.step()``."""
    return LeakProfiler()
