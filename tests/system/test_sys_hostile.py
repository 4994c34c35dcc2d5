"""Hostile input at every public entry that takes it from outside: settings (environment and
``.env`` lines), size strings, command lines and control-socket requests.

Each input must give a correct result or a clear error (``ConfigError`` naming the variable, a
one-line usage error with exit code 2, an ``{"ok": false, "error": ...}`` reply); none may crash
the process, leak another exception type or hang (every subprocess and socket has a timeout).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from budget_helpers import Steady, monitor_with
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from system_figures import Figures

from zerorag_guard import ConfigError, GuardConfig, MemoryBudget, get_monitor, memory_budget
from zerorag_guard.cli import COMMANDS
from zerorag_guard.config import MAX_MB, parse_size_mb
from zerorag_guard.control.server import ControlServer, current_server
from zerorag_guard.memory.limits import EffectiveLimit
from zerorag_guard.memory.probes import MB

# The units written out here, not imported: MB of each, binary whatever the spelling.
UNITS_MB = {
    "": 1.0,
    "b": 1 / 1048576,
    **dict.fromkeys(["k", "kb", "kib"], 1 / 1024),
    **dict.fromkeys(["m", "mb", "mib"], 1.0),
    **dict.fromkeys(["g", "gb", "gib"], 1024.0),
    **dict.fromkeys(["t", "tb", "tib"], 1048576.0),
}


def size_mb(text: str) -> float:
    """What a size string the parser accepted means, worked out with the table above."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+?)\s*([A-Za-z]*)\s*", text)
    assert match is not None, f"accepted {text!r}, which is no number and unit"
    return float(match.group(1)) * UNITS_MB[match.group(2).lower()]


# A monitor whose effective limit is set here: memory_budget's cap is 90% of it, 1843.2 MB.
LIMITED = monitor_with(Steady(100), EffectiveLimit(2048 * MB, "cgroup v1", "test"))

pytestmark = [pytest.mark.system]

ENV_NAMES = [str(f.metadata["env"]) for f in dataclasses.fields(GuardConfig)]
FIELDS = [f.name for f in dataclasses.fields(GuardConfig)]
NASTY = [
    "",
    " ",
    "\t",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "-0",
    "0",
    "1e309",
    "1e-320",
    "0x10",
    "1_000",
    "١٢٣",
    "\uff11\uff12",
    "true",
    "yes",
    "None",
    "[]",
    "{}",
    "'1'",
    '"1"',
    "1,5",
    "1.5.5",
    "--1",
    "+5",
    "9" * 40,
    "1" + " " * 1000,
    "\u202e42",
    "\udcff",
    "1 PB",
    "-1 GB",
    "0.0000001 KB",
    "12 mB",
]
JUNK_TEXT = st.text(max_size=40)
NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
)
SIZE_TEXT = st.builds(
    lambda n, sp, unit: f"{n}{sp}{unit}",
    st.floats(min_value=-1e6, max_value=1e12, allow_nan=False).map(lambda x: f"{x:g}"),
    st.sampled_from(["", " ", "  "]),
    st.sampled_from([*UNITS_MB, "MB", "Gb", "GiB", "kB", "x", "pb", "mbs"]),
)
VALUE = st.one_of(st.sampled_from(NASTY), JUNK_TEXT, NUMBER_TEXT, SIZE_TEXT)


def hyp(examples: int) -> settings:
    """Hypothesis settings for a fuzz case: ``examples`` inputs, no per-input deadline (the
    machine is shared; hangs are caught by the timeouts instead)."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def check_config(cfg: GuardConfig) -> None:
    """A config that was accepted satisfies every rule the settings state."""
    assert 0 < cfg.threshold_mb < cfg.critical_threshold_mb <= MAX_MB
    assert isinstance(cfg.batch_size, int) and 1 <= cfg.batch_size <= 10_000_000
    assert cfg.history_size >= 10 and cfg.alert_history_size >= 1
    assert 0.001 <= cfg.sample_interval <= 60 and 0 < cfg.gc_interval_seconds <= 86400
    assert 0 < cfg.preventive_ratio < 1 and 0 <= cfg.hysteresis_ratio <= 0.5
    for name in FIELDS:
        value = getattr(cfg, name)
        assert not (isinstance(value, float) and not math.isfinite(value)), name
    assert GuardConfig(**dataclasses.asdict(cfg)) == cfg


def check_error(exc: ConfigError, names: list[str]) -> None:
    """A clear error: one line naming one of the variables given."""
    message = str(exc)
    assert exc.variable in names, (exc.variable, names)
    assert message.startswith(f"{exc.variable}=") and "expected" in message


def test_settings_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    tried = {"n": 0, "accepted": 0, "refused": 0}
    key = st.one_of(
        st.sampled_from(ENV_NAMES),
        st.text(max_size=12).map(lambda s: "ZERORAG_GUARD_" + s),
        st.text(max_size=12),
    )

    @hyp(400)
    @given(env=st.dictionaries(key, VALUE, max_size=6))
    def check(env: dict[str, str]) -> None:
        tried["n"] += 1
        try:
            cfg = GuardConfig.from_env(environ=env)
        except ConfigError as exc:
            tried["refused"] += 1
            check_error(exc, list(env))
            return
        tried["accepted"] += 1
        check_config(cfg)
        for name, var in zip(FIELDS, ENV_NAMES):
            if var in env and name.endswith("_mb"):
                assert getattr(cfg, name) == pytest.approx(size_mb(env[var]))

    check()
    figures.record("hostile", environment_dicts=tried["n"], environment_refused=tried["refused"])


def test_settings_from_dotenv_lines(tmp_path: Path, figures: Figures) -> None:
    tried = {"n": 0}
    line = st.one_of(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(ENV_NAMES), VALUE),
        st.builds(lambda k, v: f"export {k}='{v}'", st.sampled_from(ENV_NAMES), VALUE),
        st.builds(lambda k, v: f'{k}="{v}', st.sampled_from(ENV_NAMES), VALUE),  # unbalanced
        st.text(max_size=60),
        st.sampled_from(["#", "=", "==", "KEY", "'", '"', "\\", "${MEMORY_THRESHOLD_MB}"]),
    )
    raw = st.binary(max_size=60)

    @hyp(300)
    @given(lines=st.lists(st.one_of(line.map(lambda s: s.encode("utf-8", "surrogatepass")), raw)))
    def check(lines: list[bytes]) -> None:
        tried["n"] += 1
        path = tmp_path / f"case{tried['n']}.env"
        path.write_bytes(b"\n".join(lines) + b"\n")
        try:
            cfg = GuardConfig.from_env(environ={}, dotenv_path=path)
        except ConfigError as exc:
            check_error(exc, [*ENV_NAMES, "dotenv_path"])
            return
        finally:
            path.unlink()
        check_config(cfg)

    check()
    figures.record("hostile", dotenv_files=tried["n"])


def test_size_strings(socket_home: Path, figures: Figures) -> None:
    tried = {"n": 0}
    anything = st.one_of(
        VALUE,
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**30), 10**30),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )

    @hyp(500)
    @given(value=anything)
    def check(value: Any) -> None:
        tried["n"] += 1
        try:
            mb = parse_size_mb(value, "limit_mb")
        except ConfigError as exc:
            check_error(exc, ["limit_mb"])
        else:
            assert isinstance(mb, float) and 0 < mb <= MAX_MB
            want = size_mb(value) if isinstance(value, str) else float(value)
            assert mb == pytest.approx(want, rel=1e-12)
        if value is None:
            return  # memory_budget(None) means "no limit of its own"
        try:
            budget = memory_budget(limit_mb=value, monitor=LIMITED)
        except ConfigError as exc:
            check_error(exc, ["limit_mb"])
        else:
            # The ceiling is the size given, never above 90% of the effective limit (in whole
            # bytes: a sub-byte size such as "0.0000001 KB" is a ceiling of 0).
            assert isinstance(budget, MemoryBudget)
            assert budget.limit_mb == pytest.approx(min(mb, 1843.2), abs=1e-6)

    @hyp(300)
    @given(
        number=st.floats(min_value=1e-3, max_value=1e6),
        unit=st.sampled_from(sorted(UNITS_MB)),
        upper=st.booleans(),
        space=st.sampled_from(["", " ", "\t"]),
    )
    def exact(number: float, unit: str, upper: bool, space: str) -> None:
        tried["n"] += 1
        text = f" {number!r}{space}{unit.upper() if upper else unit} "
        expected = number * UNITS_MB[unit]
        if 0 < expected <= MAX_MB:
            assert parse_size_mb(text) == pytest.approx(expected, rel=1e-12)
        else:
            with pytest.raises(ConfigError):
                parse_size_mb(text)

    check()
    exact()
    figures.record("hostile", size_strings=tried["n"])


def test_runtime_settings(socket_home: Path, figures: Figures) -> None:
    """``configure(**changes)`` with hostile values: validated like the environment, and a
    refused change changes nothing."""
    monitor = get_monitor()
    tried = {"n": 0}

    @hyp(200)
    @given(name=st.sampled_from([*FIELDS, "nope", "threshold"]), value=VALUE)
    def check(name: str, value: Any) -> None:
        tried["n"] += 1
        before = monitor.config
        try:
            monitor.configure(**{name: value})
        except ConfigError as exc:
            assert monitor.config is before
            assert exc.variable in (name, *ENV_NAMES)
        else:
            check_config(monitor.config)
            monitor.configure(**dataclasses.asdict(before))

    check()
    figures.record("hostile", runtime_settings=tried["n"])


# -- the command line -------------------------------------------------------------------------
CLI_FIXED: list[list[str]] = [
    [],
    ["--pid"],
    ["--nope"],
    ["report", "--pid"],
    ["report", "--pid", "0"],
    ["report", "--pid", "-5"],
    ["report", "--pid", "1"],
    ["report", "--pid", "99999999"],
    ["report", "--pid", "1e3"],
    ["report", "--json", "--json", "extra"],
    ["monitor"],
    ["monitor", "nan"],
    ["monitor", "inf"],
    ["monitor", "-1"],
    ["monitor", "0.2", "--interval", "0"],
    ["optimize", "0"],
    ["optimize", "1e309"],
    ["optimize", "0.001"],
    ["configure", "--pid", "1", "MEMORY_THRESHOLD_MB=abc"],
    ["configure", "--pid", "1", "NOPE=1"],
    ["configure", "="],
    ["leaks", "zz_no_such_module:fn"],
    ["leaks", "zerorag_guard:__version__"],
    ["leaks", ":"],
    ["debug", "--trace-seconds", "-1"],
    ["debug", "--top", "0"],
    ["é" * 3000],
    ["cleanup", "--aggressive", "--pid", "\u0661"],
]
CLI_TOKENS = [
    # Every command but demo, which runs a whole ingestion.
    *(command for command in COMMANDS if command != "demo"),
    "--pid",
    "--json",
    "--aggressive",
    "--interval",
    "--trace-seconds",
    "--top",
    "--iterations",
    "--warmup",
    "--threshold-kb",
    "--help",
    "-h",
    "--",
    "-",
    "=",
    "MEMORY_THRESHOLD_MB=",
    "BATCH_SIZE=0",
    "threshold_mb=1 GB",
    "nan",
    "-inf",
    "0",
    "-1",
    "1e400",
    "0.1",
    "2",
]


def _fuzz_argv(rng: random.Random) -> list[str]:
    """A command line from the CLI's own words, small numbers and junk. Numbers stay at most 2
    (``monitor 1e6`` would rightly run for days); junk holds no path separator, so an option
    taking a file (``--csv``) can only write into the test's working directory."""
    argv = []
    for _ in range(rng.randint(0, 6)):
        kind = rng.random()
        if kind < 0.6:
            argv.append(rng.choice(CLI_TOKENS))
        elif kind < 0.8:
            argv.append(f"{rng.uniform(-1e6, 2):.3g}")
        else:
            alphabet = "abcXYZ019_.:=-+é\u0661 \t%$'\"\\"
            argv.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
    return argv


def _run_cli(argv: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "zerorag_guard", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
        check=False,
    )
    return {"argv": argv, "code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


#: The fixed run's seed: the same 30 command lines on every run, beside 30 new ones.
FIXED_SEED = 20261201


@pytest.mark.slow
@pytest.mark.parametrize("draw", ["fixed-seed", "new-seed"])
def test_command_line(socket_home: Path, tmp_path: Path, figures: Figures, draw: str) -> None:
    if draw == "fixed-seed":
        seed = FIXED_SEED
    else:
        seed = int(os.environ.get("ZERORAG_FUZZ_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    cases = CLI_FIXED + [_fuzz_argv(rng) for _ in range(30)]
    # The private XDG_RUNTIME_DIR: a --pid names no other process's socket.
    env = {**os.environ, "XDG_RUNTIME_DIR": str(socket_home), "COLUMNS": "100"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda a: _run_cli(a, tmp_path, env), cases))
    codes: dict[int, int] = {}
    bad = []
    for r in results:
        codes[r["code"]] = codes.get(r["code"], 0) + 1
        errors = [line for line in r["stderr"].splitlines() if "error:" in line]
        ok = r["code"] in (0, 1, 2, 3) and "Traceback" not in r["stderr"]
        if r["code"] in (2, 3):
            ok = ok and len(errors) == 1
        if not ok:
            bad.append({"argv": r["argv"], "code": r["code"], "stderr": r["stderr"][-1500:]})
    figures.record(
        "hostile",
        command_lines=len(cases),
        command_line_seed=seed,
        command_line_exit_codes={str(k): v for k, v in sorted(codes.items())},
    )
    print(f"seed {seed}: exit codes {codes}")
    assert bad == [], f"seed {seed} (ZERORAG_FUZZ_SEED to replay): {bad}"


# -- the control socket ------------------------------------------------------------------------
def _exchange(path: Path, payload: bytes, timeout: float = 15.0) -> dict[str, Any]:
    """Send ``payload`` (a newline added when missing) and return the first reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.fspath(path))
        s.sendall(payload if payload.endswith(b"\n") else payload + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf.split(b"\n", 1)[0])
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert isinstance(reply.get("error"), str) and reply["error"], reply
    return reply


def _read_to_end(s: socket.socket) -> dict[str, Any]:
    """The one reply line a connection gets before the server closes it; a server that keeps
    silent fails here (socket timeout), one that closes without a word fails on the parse."""
    data = b""
    while chunk := s.recv(1 << 16):
        data += chunk
    lines = data.splitlines()
    assert len(lines) == 1, data[:200]
    reply = json.loads(lines[0])
    assert reply["ok"] is False and isinstance(reply["error"], str), reply
    return reply


def _oversized(path: Path) -> dict[str, Any]:
    """Send a 2 MiB line (over the 1 MiB cap) from a second thread, as the server may close
    before it has all of it, and return the reply read meanwhile."""
    huge = b'{"cmd": "ping", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}\n'
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        # Under the server's 5 s read timeout: a server waiting for the end of the line would
        # answer only after it, and fail here.
        s.settimeout(4.0)
        s.connect(os.fspath(path))

        def send() -> None:
            try:
                s.sendall(huge)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server stopped reading once the line passed its cap

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            return _read_to_end(s)
        finally:
            sender.join(10)


def _ping(path: Path) -> None:
    reply = _exchange(path, b'{"cmd": "ping"}')
    assert reply["ok"] and reply["pid"] == os.getpid(), reply


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
SAFE_SETTINGS = [n for n in ENV_NAMES if not n.endswith("CONTROL_SOCKET")]
REQUEST = st.fixed_dictionaries(
    {
        "cmd": st.one_of(
            st.sampled_from(["ping", "health", "history", "cleanup", "configure"]), JSON
        )
    },
    optional={
        "since": JSON,
        "strategy": st.one_of(st.sampled_from(["light", "standard", "aggressive", "x"]), JSON),
        "changes": st.one_of(JSON, st.dictionaries(st.sampled_from(SAFE_SETTINGS), VALUE)),
    },
)


def test_control_socket_requests(socket_home: Path, figures: Figures) -> None:
    monitor = get_monitor()
    baseline = monitor.config
    server = current_server()
    assert server is not None and server.serving, "no control socket in this process"
    path = server.path
    _ping(path)
    tried = {"n": 0}

    @hyp(250)
    @given(
        payload=st.one_of(
            st.binary(max_size=300),
            JSON.map(lambda v: json.dumps(v).encode()),
            REQUEST.map(lambda v: json.dumps(v).encode()),
        )
    )
    def check(payload: bytes) -> None:
        tried["n"] += 1
        _exchange(path, payload)
        _ping(path)
        monitor.configure(**dataclasses.asdict(baseline))

    check()
    # Fixed cases: oversized, deeply nested, debug with junk, several lines at once.
    specials = [
        b"[" * 100_000,
        b'{"cmd": "debug", "trace_seconds": "nan", "top": 3}',
        b'{"cmd": "debug", "trace_seconds": 0, "top": "x"}',
        b'{"cmd": "history", "since": 1e999}',
        b'{"cmd": "ping"}\n{"cmd": "nope"}\n\xff\xfe\n',
        b"\x00" * 1000,
    ]
    for payload in specials:
        tried["n"] += 1
        _exchange(path, payload)
        _ping(path)
    tried["n"] += 1
    assert "longer than" in _oversized(path)["error"]
    _ping(path)
    assert server.serving and monitor.running
    figures.record("hostile", control_requests=tried["n"], control_refused=server.errors)


def test_control_socket_floods_and_silent_clients(
    socket_home: Path, tmp_path: Path, figures: Figures
) -> None:
    """More idle connections than the server serves at once, each sending nothing: the extra ones
    are told "busy", the idle ones are dropped after the read timeout, and a good request is
    answered again at once after that."""
    monitor = get_monitor()
    home = tmp_path / "sock"
    home.mkdir(mode=0o700)
    # A read timeout far longer than 12 connects take, so exactly the first 4 hold a slot while
    # the other 8 arrive, whatever the machine's stalls.
    server = ControlServer(monitor, home / "flood.sock", read_timeout=3.0, max_connections=4)
    server.start()
    idle: list[socket.socket] = []
    try:
        for _ in range(12):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(15)
            s.connect(os.fspath(server.path))
            idle.append(s)
        # Each idle client is told why it is dropped, in one line, then the server closes.
        replies = [_read_to_end(s) for s in idle]
        errors = [r["error"] for r in replies]
        busy = sum("busy" in e for e in errors)
        timed_out = sum("no complete request line within 3 s" in e for e in errors)
        assert (busy, timed_out) == (12 - 4, 4), errors
        # Every connection has ended, and a slot is free before its connection closes: a good
        # request is answered at once, with no pause to wait for the server.
        reply = _exchange(server.path, b'{"cmd": "ping"}')
        assert reply["ok"], reply
    finally:
        for s in idle:
            s.close()
        server.close()
    assert not server.path.exists()
    figures.record("hostile", control_idle_connections=len(idle), control_busy_replies=busy)
