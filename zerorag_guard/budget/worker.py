"""The worker side of an isolated call: a loop that runs calls sent over a pipe.

A worker process (started by :mod:`zerorag_guard.budget.isolation` with ``forkserver`` or ``spawn``)
runs :func:`serve`. Each message is a pickled ``(module, qualname, args, kwargs)``: the function
is found by name, as ``pickle`` finds one, and called; a guarded function finds itself running
in a worker and runs undecorated. The reply is a pickled ``(kind, ...)``:

- ``("ok", result, start_rss, peak_rss)``: the call returned (its exact peak, from the kernel's
  high-water mark, is how chunks are sized);
- ``("error", exception or None, traceback text, type name, message)``: the call raised; an
  exception that cannot be pickled comes back as its type name and message;
- ``("oom", message, start_rss, peak_rss)``: an allocation failed under the worker's
  ``RLIMIT_DATA``; the worker then exits (its heap may be in any state) and is replaced.

A worker starts by importing the function's module and replying ``("ready",)`` (or an
``error`` reply if that fails). It ignores SIGINT (the caller decides what a Ctrl-C ends) and
exits when the caller's end of the pipe closes, so a caller killed outright leaves no worker.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import resource
import signal
import traceback
from typing import Any, Optional

#: True in a worker process: a guarded function called there runs undecorated.
IN_WORKER = False


def resolve(module: str, qualname: str) -> Any:
    """The object ``module.qualname``, found as ``pickle`` finds a function."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def cap_data(limit: int) -> str:
    """Cap this process's data segment (heap and private writable mappings) at ``limit``
    bytes; falls back to the address space where ``RLIMIT_DATA`` cannot be set."""
    for name in ("RLIMIT_DATA", "RLIMIT_AS"):
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            resource.setrlimit(which, (limit, limit))
            return name
        except (ValueError, OSError):
            continue
    raise OSError("neither RLIMIT_DATA nor RLIMIT_AS can be set here")


def _vm_data_mb() -> float:
    """This process's data segment (``VmData``: what ``RLIMIT_DATA`` counts), in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _send(conn: Any, reply: tuple[Any, ...]) -> None:
    conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


def _error_reply(exc: BaseException) -> tuple[Any, ...]:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        pickle.loads(pickle.dumps(exc))
        carried: Optional[BaseException] = exc
    except Exception:
        carried = None
    return ("error", carried, text, kind, str(exc))


def _call(message: bytes) -> Any:
    module, qualname, args, kwargs = pickle.loads(message)
    result = resolve(module, qualname)(*args, **kwargs)
    if inspect.iscoroutine(result):
        import asyncio

        result = asyncio.run(result)
    return result


def serve(conn: Any, data_limit: Optional[int], module: str) -> None:
    """Import ``module`` (the function's), say ``("ready",)``, then run calls from ``conn``
    until it closes (the worker's main loop). A call's timeout counts from here on, not the
    worker's start-up."""
    global IN_WORKER
    IN_WORKER = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ..memory.probes import MemoryProbe

    probe = MemoryProbe()
    try:
        importlib.import_module(module)
        if data_limit is not None:
            cap_data(data_limit)
    except BaseException as exc:
        _send(conn, _error_reply(exc))
        return
    _send(conn, ("ready",))
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        window = probe.open_window()
        start = probe.rss_bytes()
        try:
            result = _call(message)
            reply: tuple[Any, ...] = ("ok", result, start, window.close())
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if data_limit is not None:
                text += f" (data segment at {_vm_data_mb():,.1f} MB under RLIMIT_DATA)"
            _send(conn, ("oom", text, start, window.close()))
            os._exit(0)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt go back too
            window.close()
            _send(conn, _error_reply(exc))
            continue
        conn.send_bytes(data)
