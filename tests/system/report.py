"""Render ``docs/reliability.md`` from the figures the system tests wrote.

Usage: ``python tests/system/report.py .reliability/figures.json docs/reliability.md`` (what
``make reliability`` runs after the system tests). Every figure on the page comes from the JSON
of one real run; the text around them says what each test does and what it asserts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _v(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.1f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("figure", "value")) -> str:
    out = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def _sum(d: dict[str, Any], *keys: str) -> int:
    return sum(int(d.get(k) or 0) for k in keys)


def summary(s: dict[str, Any], outcomes: dict[str, str]) -> str:
    c, k, f, h = (s.get(n, {}) for n in ("container", "soak", "faults", "hostile"))
    faults = _sum(
        f,
        "loop_body_exceptions",
        "listener_exceptions",
        "cache_clearer_exceptions",
        "cleanup_exceptions",
        "keyboard_interrupts",
        "sigint_interrupted",
    )
    inputs = _sum(
        h,
        "environment_dicts",
        "dotenv_files",
        "size_strings",
        "runtime_settings",
        "command_lines",
        "control_requests",
        "control_idle_connections",
    )
    lost = _sum(c, "guarded_items_lost") + _sum(k, "items_lost")
    passed = sum(1 for o in outcomes.values() if o == "passed")
    rows = [
        (
            "container limit",
            f"unguarded job killed (exit {_v(c.get('unguarded_returncode'))}, "
            f"oom_kill {_v(c.get('unguarded_oom_kill'))}); guarded job finished "
            f"{_v(c.get('guarded_processed'))} of {_v(c.get('items'))} items, peak "
            f"{_v(c.get('guarded_cgroup_peak_mb'), 'MB')} under {_v(c.get('limit_mb'), 'MB')}",
        ),
        (
            "load held (soak)",
            f"{_v(k.get('items_processed'))} items in {_v(k.get('rounds'))} rounds over "
            f"{_v(k.get('seconds'), 's')}; RSS slope {_v(k.get('slope_mb_per_min'), 'MB/min')}",
        ),
        ("faults survived", _v(faults)),
        ("hostile inputs tried", _v(inputs)),
        ("items lost", _v(lost)),
        ("tests passed", f"{passed} of {len(outcomes)}"),
    ]
    return _table(rows, ("what", "result"))


def container(c: dict[str, Any]) -> str:
    if not c:
        return "Not run here (the test skips where no writable memory cgroup exists)."
    return _table(
        [
            ("cgroup version", _v(c.get("cgroup_version"))),
            ("limit (memory.limit_in_bytes / memory.max)", _v(c.get("limit_mb"), "MB")),
            ("items x size", f"{_v(c.get('items'))} x {_v(c.get('item_kb'), 'KB')}"),
            ("total moved through memory", _v(c.get("total_mb"), "MB")),
            ("unguarded: batch size", _v(c.get("fixed_batch"))),
            ("unguarded: return code", _v(c.get("unguarded_returncode"))),
            ("unguarded: oom_kill count", _v(c.get("unguarded_oom_kill"))),
            ("unguarded: failcnt (limit hits)", _v(c.get("unguarded_failcnt"))),
            ("unguarded: cgroup peak", _v(c.get("unguarded_cgroup_peak_mb"), "MB")),
            ("guarded: return code", _v(c.get("guarded_returncode"))),
            ("guarded: ceiling found on its own", _v(c.get("guarded_ceiling_mb"), "MB")),
            ("guarded: items processed", _v(c.get("guarded_processed"))),
            ("guarded: items lost", _v(c.get("guarded_items_lost"))),
            ("guarded: peak RSS (kernel high-water mark)", _v(c.get("guarded_peak_rss_mb"), "MB")),
            (
                "guarded: cgroup peak (max_usage_in_bytes)",
                _v(c.get("guarded_cgroup_peak_mb"), "MB"),
            ),
            ("guarded: oom_kill count", _v(c.get("guarded_oom_kill"))),
            ("guarded: failcnt", _v(c.get("guarded_failcnt"))),
            (
                "guarded: batches (largest)",
                f"{_v(c.get('guarded_batches'))} ({_v(c.get('guarded_max_batch'))})",
            ),
            ("guarded: time", _v(c.get("guarded_seconds"), "s")),
        ]
    )


def soak(k: dict[str, Any]) -> str:
    if not k:
        return "Not run."
    cleanups = k.get("cleanups") or {}
    counts = ", ".join(f"{n} {v.get('count', 0)}" for n, v in cleanups.items())
    return _table(
        [
            (
                "duration (warm-up)",
                f"{_v(k.get('seconds'), 's')} ({_v(k.get('warmup_seconds'), 's')})",
            ),
            ("rounds / items processed", f"{_v(k.get('rounds'))} / {_v(k.get('items_processed'))}"),
            ("items lost", _v(k.get("items_lost"))),
            (
                "baseline RSS / round peak",
                f"{_v(k.get('base_mb'), 'MB')} / {_v(k.get('round_peak_mb'), 'MB')}",
            ),
            ("RSS readings after warm-up", _v(k.get("rss_points"))),
            (
                "RSS first / last / min / max",
                " / ".join(
                    _v(k.get(n), "MB")
                    for n in ("rss_first_mb", "rss_last_mb", "rss_min_mb", "rss_max_mb")
                ),
            ),
            ("**RSS slope** (bound 1 MB/min)", _v(k.get("slope_mb_per_min"), "MB/min")),
            (
                "RSS slope of the same readings before malloc_trim (not asserted)",
                _v(k.get("untrimmed_slope_mb_per_min"), "MB/min"),
            ),
            (
                "RSS after aggressive cleanups: first / last",
                f"{_v(k.get('kept_first_mb'), 'MB')} / {_v(k.get('kept_last_mb'), 'MB')}",
            ),
            (
                "**slope after aggressive cleanups** (bound 1 MB/min)",
                _v(k.get("kept_slope_mb_per_min"), "MB/min"),
            ),
            (
                "Python allocated blocks: first / last",
                f"{_v(k.get('blocks_first'))} / {_v(k.get('blocks_last'))}",
            ),
            (
                "**allocated-blocks slope** (bound 3000/min)",
                _v(k.get("blocks_slope_per_min"), "/min"),
            ),
            (
                "**file descriptors** after warm-up / end",
                f"{_v(k.get('fds_after_warmup'))} / {_v(k.get('fds_end'))}",
            ),
            (
                "**threads** after warm-up / end",
                f"{_v(k.get('threads_after_warmup'))} / {_v(k.get('threads_end'))}",
            ),
            ("history length / size", f"{_v(k.get('history_len'))} / {_v(k.get('history_size'))}"),
            (
                "alerts kept / size",
                f"{_v(k.get('alerts_len'))} / {_v(k.get('alert_history_size'))}",
            ),
            (
                "operation history / size",
                f"{_v(k.get('operations_len'))} / {_v(k.get('operation_history_size'))}",
            ),
            ("alerts heard by the listeners", _v(k.get("alerts_heard"))),
            ("cleanups run", counts or "n/a"),
            (
                "control-socket queries answered (failed)",
                f"{_v(k.get('control_queries_answered'))} ({_v(k.get('control_failures'))})",
            ),
        ]
    )


def faults(f: dict[str, Any]) -> str:
    if not f:
        return "Not run."
    rows = [
        ("exceptions in the loop body", _v(f.get("loop_body_exceptions"))),
        ("exceptions in a listener", _v(f.get("listener_exceptions"))),
        ("exceptions in a registered cache clearer", _v(f.get("cache_clearer_exceptions"))),
        (
            "exceptions in a cleanup (sampler, worker, between batches)",
            _v(f.get("cleanup_exceptions")),
        ),
        ("KeyboardInterrupt raised in nested budgets", _v(f.get("keyboard_interrupts"))),
        (
            "SIGINT at random moments: trials / interrupted / left inconsistent",
            f"{_v(f.get('sigint_trials'))} / {_v(f.get('sigint_interrupted'))} / "
            f"{_v(f.get('sigint_inconsistent'))}",
        ),
    ]
    for method in ("fork", "spawn"):
        if f.get(f"{method}_child_sampler") is not None:
            rows.append(
                (
                    f"{method} child: own sampler running, RSS it sampled (parent's)",
                    f"{_v(f.get(f'{method}_child_sampler'))}, "
                    f"{_v(f.get(f'{method}_child_sampled_mb'), 'MB')} "
                    f"({_v(f.get(f'{method}_parent_rss_mb'), 'MB')})",
                )
            )
    stops = f.get("cleanup_exception_stops_budget_loop")
    if stops is not None:
        rows.append(("a cleanup raising between batches ends the loop", _v(stops)))
    return _table(rows, ("fault", "survived"))


def hostile(h: dict[str, Any]) -> str:
    if not h:
        return "Not run."
    codes = h.get("command_line_exit_codes") or {}
    shown = ", ".join(f"{k}: {v}" for k, v in codes.items())
    return _table(
        [
            (
                "environment dicts -> `GuardConfig.from_env`",
                f"{_v(h.get('environment_dicts'))} ({_v(h.get('environment_refused'))} refused)",
            ),
            ("`.env` files of random lines and bytes", _v(h.get("dotenv_files"))),
            (
                "size strings and values (`parse_size_mb`, `memory_budget`)",
                _v(h.get("size_strings")),
            ),
            ("run-time `configure(...)` changes", _v(h.get("runtime_settings"))),
            (
                "command lines (`python -m zerorag_guard`)",
                f"{_v(h.get('command_lines'))} (exit codes {shown or 'n/a'}; "
                f"seed {h.get('command_line_seed')})",
            ),
            (
                "control-socket requests to a live server",
                f"{_v(h.get('control_requests'))} "
                f"({_v(h.get('control_refused'))} refused with an error reply)",
            ),
            (
                "idle connections against 4 slots (busy replies)",
                f"{_v(h.get('control_idle_connections'))} ({_v(h.get('control_busy_replies'))})",
            ),
        ],
        ("entry", "inputs tried"),
    )


def durations(d: dict[str, Any], outcomes: dict[str, str]) -> str:
    rows = [(f"`{name}`", f"{outcomes.get(name, '?')}, {_v(sec, 's')}") for name, sec in d.items()]
    return _table(rows, ("test", "outcome, time"))


TEMPLATE = """# Reliability

The promise is that a guarded job survives where an unguarded one dies, loses nothing, and that
the guard itself never becomes the problem. The system tests in `tests/system/` check it against
the real kernel; this page is generated from one run of them (`make reliability`, which writes
`.reliability/figures.json` and renders this page with `tests/system/report.py`).

Generated {generated} on Linux {kernel}, Python {python}, {cpus} CPUs; the system tests took
{seconds} s.

## Summary

{summary}

## Container limit survival

`test_sys_container.py` makes a child of the process's own memory cgroup (v1
`memory.limit_in_bytes`, or v2 `memory.max`; as root where the hierarchy is writable, otherwise
the test skips and says why), and runs the same ingestion job in it twice: every item holds its
memory until its batch ends. Unguarded, with a fixed batch twice the size of the limit, the
kernel's OOM killer must end it (return code -9, `oom_kill` in `memory.oom_control` or
`memory.events`). Guarded, it is given **no limit**: its thresholds are set at 4000/5000 MB, far
above the cgroup, so it must find the cgroup's limit itself (`limits.effective_limit`) and keep
the default ceiling at 90% of it, and it must finish with every item processed and its peak under
the limit. The cgroup is removed afterwards, also on failure. In v1 the cgroup's usage counts page
cache too, so the cgroup's own peak (`memory.max_usage_in_bytes`) is reported next to the job's.

{container}

## Soak

`test_sys_soak.py` runs a guarded ingestion loop (`soak_job.py`) in a subprocess for
`--soak-seconds` (120 in `make test`; `pytest tests/system --soak-seconds 1800` for longer) with
everything active: the monitor samples every 20 ms; its thresholds sit just above the loop's
baseline, so every round enters a level and recovers (alerts to two listeners, light and queued
standard cleanups); standard and aggressive cleanups are also forced on a timer; a registered
`lru_cache` fills between cleanups; the test queries the control socket every 2 s (`ping`,
`health`, `history`). After the warm-up it asserts: no RSS trend (least-squares slope of readings
taken every 0.5 s at the same point of the loop, and of what is left after each aggressive
cleanup, both under 1 MB/min), no trend in Python's allocated blocks, the bounded lists within
their sizes, and the same threads and file descriptors at the end as after the warm-up. Each
reading is taken just after `malloc_trim(0)`: glibc either keeps the freed top of the heap mapped
or returns it, depending on where the last batch's blocks fell, which flips an untrimmed reading
between two levels about 4 MB apart and makes its slope noise (shown, not asserted); a leak
survives the trim.

{soak}

## Faults

`test_sys_faults.py` injects faults into a guarded loop running with the process-wide monitor
(sampling every 5 ms). After each, the sampler thread must be alive and its samples advancing,
`processed` must equal the items the loop body finished, and resuming from it must hand out
every remaining item exactly once. `KeyboardInterrupt` is raised inside nested budgets and
guarded calls, and SIGINT is also sent at random moments (`interrupt_job.py`), so it lands inside
the guard's own code too; afterwards no budget may be left active
(`zerorag_guard.budget.budget.current_budget()` is `None`), the sampler runs and a new budget works.
Children started with `multiprocessing`'s `fork` and `spawn` contexts mid-loop must each have a
guard of their own: a running sampler that sees the child's own 80 MB allocation, and a working
`memory_budget`.

{faults}

## Hostile input

`test_sys_hostile.py` feeds every public entry that takes outside input with hypothesis-generated
and hand-picked hostile values. Each must give a correct result (checked against the stated
rules) or a clear error: a `ConfigError` naming the variable, the value and the form expected; a
one-line `zerorag-guard ...: error: ...` and exit code 2 or 3 from the command (never a
traceback; every run has a 60 s timeout); an `{{"ok": false, "error": ...}}` reply from the
control socket, which must answer a good `ping` after every hostile request.

{hostile}

## Tests of this run

{durations}
"""


def render(data: dict[str, Any]) -> str:
    s = data.get("sections", {})
    outcomes = data.get("outcomes", {})
    machine = data.get("machine", {})
    return TEMPLATE.format(
        generated=data.get("generated", "?"),
        kernel=machine.get("kernel", "?"),
        python=machine.get("python", "?"),
        cpus=machine.get("cpus", "?"),
        seconds=_v(data.get("seconds")),
        summary=summary(s, outcomes),
        container=container(s.get("container", {})),
        soak=soak(s.get("soak", {})),
        faults=faults(s.get("faults", {})),
        hostile=hostile(s.get("hostile", {})),
        durations=durations(s.get("durations", {}), outcomes),
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} FIGURES.json OUTPUT.md", file=sys.stderr)
        return 2
    data = json.loads(Path(argv[1]).read_text())
    Path(argv[2]).write_text(render(data))
    print(f"wrote {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
