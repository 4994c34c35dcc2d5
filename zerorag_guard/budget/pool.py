"""The workers behind isolated calls: processes kept between calls, each capped, and their pool.

A :class:`WorkerPool` starts its workers on first use (``forkserver`` where there is one, else
``spawn``), each in a child memory cgroup of its own (or under ``RLIMIT_DATA``) and importing the
function's module once. A call is one pickled message and one reply; a worker that died, ran
past its timeout or out of memory is replaced by the next call that needs one, and the pool says
why (:class:`~zerorag_guard.WorkerCrashed`, :class:`~zerorag_guard.WorkerTimeout`, or an
``oom`` :class:`Outcome`). At exit every worker is stopped; in a forked child the pools forget
the parent's workers.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.util
import os
import pickle
import queue
import signal
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import WorkerCrashed, WorkerTimeout
from . import worker as worker_side
from .worker_cap import WorkerCgroup

#: How long a new worker may take to start and import the function's module.
STARTUP_SECONDS = 120
_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()
_names = itertools.count(1)


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` of an exception from an isolated call."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


@dataclass
class Outcome:
    """What one call in a worker came to: ``kind`` ``ok`` (``value`` is the result), ``error``
    (``value`` is the exception, to raise) or ``oom`` (the cap stopped it), and its memory."""

    kind: str
    value: Any
    start: int
    peak: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    def raise_error(self) -> None:
        """Raise the call's own exception, if it raised one."""
        if self.kind == "error":
            raise self.value


class _Worker:
    """One worker process, its pipe and its cap."""

    def __init__(self, ctx: Any, limit: int, mode: str, label: str, module: str) -> None:
        self.limit = limit
        self.served = 0
        self.cgroup = WorkerCgroup.create(limit, label) if mode != "rlimit" else None
        if mode == "cgroup" and self.cgroup is None:
            raise WorkerCrashed(
                "isolate='cgroup': no child memory cgroup can be made here (the process's "
                "memory cgroup is not writable); use isolate=True to fall back to RLIMIT_DATA"
            )
        self.conn, child = ctx.Pipe()
        data_limit = None if self.cgroup is not None else limit
        self.process = ctx.Process(
            target=worker_side.serve,
            args=(child, data_limit, module),
            name=f"zerorag-worker-{label}",
        )
        try:
            self.process.start()
        except BaseException:
            self._remove_cgroup()
            raise
        finally:
            child.close()
        if self.cgroup is not None:
            try:
                self.cgroup.add(self.process.pid)
            except OSError as exc:
                self.stop()
                raise WorkerCrashed(
                    f"could not move the worker into {self.cgroup.path}: {exc}"
                ) from exc
        self._ready(module)

    def _ready(self, module: str) -> None:
        """Wait for the worker's start-up (its imports), which no call's timeout counts."""
        try:
            if not self.conn.poll(STARTUP_SECONDS):
                raise WorkerCrashed(f"a worker did not start within {STARTUP_SECONDS} s")
            reply = pickle.loads(self.conn.recv_bytes())
        except WorkerCrashed:
            self.stop()
            raise
        except (EOFError, OSError):
            failure = self._death(f"starting a worker for {module}")
            self.stop()
            raise failure from None
        if reply[0] != "ready":
            self.stop()
            raise WorkerCrashed(f"a worker could not import {module}:\n{reply[2]}")

    def _remove_cgroup(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()

    def stop(self) -> None:
        """End the worker (it exits on the closed pipe; killed if it does not) and its cgroup."""
        try:
            self.conn.close()
        except OSError:
            pass
        self.process.join(0.5)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(5)
        self._remove_cgroup()

    def call(self, message: bytes, timeout: Optional[float], what: str) -> Outcome:
        """Run one call; when this raises, the worker is dead or must be replaced."""
        try:
            self.conn.send_bytes(message)
        except (BrokenPipeError, ConnectionResetError):  # it died between calls
            raise self._death(what) from None
        if timeout is not None and not self.conn.poll(timeout):
            self.process.kill()
            raise WorkerTimeout(f"{what} ran past its timeout of {timeout:g} s: worker killed")
        try:
            reply = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            raise self._death(what) from None
        self.served += 1
        kind = reply[0]
        if kind == "ok":
            return Outcome("ok", reply[1], reply[2], reply[3])
        if kind == "oom":
            return Outcome("oom", None, reply[2], reply[3], detail=reply[1])
        _, exc, text, type_name, message_text = reply
        if exc is None:
            exc = WorkerCrashed(f"{what} raised {type_name}: {message_text} (not picklable)")
        exc.__cause__ = _RemoteTraceback(text)
        return Outcome("error", exc, 0, 0)

    def _death(self, what: str) -> BaseException:
        self.process.join(5)
        code = self.process.exitcode
        if self.cgroup is not None and self.cgroup.oom_kills() > 0:
            peak = self.cgroup.peak_bytes() or self.limit
            return _Killed(peak)
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = ""
            if -code == signal.SIGKILL:
                hint = " (not by its cap: the system's OOM killer, or another process?)"
            return WorkerCrashed(f"{what}: the worker died of {name}{hint}; it was replaced")
        hint = ""
        if not self.served:
            hint = (
                " before its first call: a worker imports the main module, so a script's "
                "own code must sit under `if __name__ == '__main__':` (as for "
                "ProcessPoolExecutor); the worker's stderr says more"
            )
        return WorkerCrashed(f"{what}: the worker exited with code {code}{hint}; it was replaced")


class _Killed(Exception):
    """Internal: the kernel killed the worker at its cgroup's cap (``peak`` bytes)."""

    def __init__(self, peak: int) -> None:
        super().__init__(peak)
        self.peak = peak


class WorkerPool:
    """``workers`` kept worker processes capped at ``limit`` bytes each, started on first use.

    Each caller thread takes an idle worker for its call; a worker that died, timed out or
    ran out of memory is replaced by the next call that needs it.
    """

    def __init__(self, limit: int, workers: int, mode: str, name: str, module: str) -> None:
        self.limit = limit
        self.module = module
        self.mode = mode
        self.name = name
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None
        self._ctx = multiprocessing.get_context(method or "spawn")
        self._idle: queue.SimpleQueue[Optional[_Worker]] = queue.SimpleQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._workers = workers
        for _ in range(workers):
            self._idle.put(None)
        _pools.add(self)

    def run(self, message: bytes, timeout: Optional[float], what: str) -> Outcome:
        """Run one pickled call in a worker (see :mod:`zerorag_guard.budget.worker`)."""
        worker = self._idle.get()
        try:
            if worker is None:
                worker = _Worker(self._ctx, self.limit, self.mode, f"{next(_names)}", self.module)
                with self._lock:
                    self._all.append(worker)
            try:
                outcome = worker.call(message, timeout, what)
            except _Killed as killed:
                outcome = Outcome("oom", None, 0, killed.peak, detail="killed by the kernel")
            except BaseException:  # dead, hung, or interrupted mid-call: out of step
                self._retire(worker)
                worker = None
                raise
            if outcome.kind == "oom":  # killed, or (RLIMIT_DATA) exiting after its reply
                self._retire(worker)
                worker = None
            return outcome
        finally:
            self._idle.put(worker)

    def _retire(self, worker: _Worker) -> None:
        worker.stop()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def shutdown(self) -> None:
        """Stop every worker (at exit; a new call starts them again)."""
        with self._lock:
            workers, self._all = list(self._all), []
        for w in workers:
            w.stop()
        self._idle = queue.SimpleQueue()
        for _ in range(self._workers):
            self._idle.put(None)

    def _forget(self) -> None:
        # In a forked child: the workers are the parent's.
        self._all = []
        self._idle = queue.SimpleQueue()
        for _ in range(self._workers):
            self._idle.put(None)


def _shutdown_all() -> None:
    for pool in list(_pools):
        pool.shutdown()


# At exit, multiprocessing joins every child process it started, after its own finalizers: stop
# the workers in one of those, or the join would wait for ever on a worker waiting for calls.
multiprocessing.util.Finalize(None, _shutdown_all, exitpriority=100)


def _forget_all() -> None:
    for pool in list(_pools):
        pool._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all)
