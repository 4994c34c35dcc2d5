"""Isolated calls: ``memory_guarded(isolate=True, limit_mb=...)`` runs each call in a capped worker.

A budget sizes batches from what items cost; it cannot save a process from one item that needs
more than the machine holds, nor from a native spike between two readings. An isolated call
runs in a worker process kept between calls, capped at ``limit_mb``: a child memory cgroup
where the hierarchy is writable (the kernel's OOM killer then kills the worker only; see
:mod:`zerorag_guard.worker_cap`), ``RLIMIT_DATA`` elsewhere (an allocation past it fails in the
worker; see :func:`zerorag_guard.worker.cap_data`). A call the cap stops raises
:class:`~zerorag_guard.WorkerOutOfMemory` in the caller, with the cap and the peak, and the
worker is replaced; the caller's process is never the one killed.

Functions travel by name (module and qualified name), as ``ProcessPoolExecutor`` pickles them:
module-level functions and static methods, arguments and results that pickle. An exception in
the worker comes back with its type and the worker's traceback (as ``__cause__``); a call past
``timeout=`` or a worker dead of another signal raises :class:`~zerorag_guard.WorkerCrashed`
(:class:`~zerorag_guard.WorkerTimeout`), and the pool goes on with a new worker.

With ``chunk=``, chunks are sized from the worker's own exact peaks against its cap (the same
:class:`~zerorag_guard.sizing.BatchSizer` as budgets). A chunk whose worker the cap stopped is
split in halves and retried until the items that do not fit even alone are found; every other
item runs once, and :class:`~zerorag_guard.WorkerOutOfMemory` is raised at the end with
``oversized`` (their positions and peaks) and ``results`` (the others', in order).
"""

from __future__ import annotations

import collections
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
from typing import Any, Callable, Optional

from . import worker as worker_side
from .errors import WorkerCrashed, WorkerOutOfMemory, WorkerTimeout
from .probes import MB
from .sizing import BatchSizer
from .worker_cap import WorkerCgroup

MODES = ("auto", "cgroup", "rlimit")
#: How long a new worker may take to start and import the function's module.
STARTUP_SECONDS = 120
_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()
_names = itertools.count(1)


def isolation_mode(isolate: Any) -> Optional[str]:
    """``isolate=`` as a mode: None (off), ``auto``, ``cgroup`` or ``rlimit``."""
    if isolate is False or isolate is None:
        return None
    if isolate is True:
        return "auto"
    if isinstance(isolate, str) and isolate in MODES:
        return isolate
    raise ValueError(
        f"isolate={isolate!r} is not valid: expected True, False, or one of "
        f"{', '.join(map(repr, MODES))}"
    )


def in_worker() -> bool:
    """Whether this process is an isolated worker (a guarded call then runs undecorated)."""
    return worker_side.IN_WORKER


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
        """Run one pickled call in a worker (see :mod:`zerorag_guard.worker`)."""
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


class Isolated:
    """An isolated function: where it is found in a worker, its pool, and how calls go."""

    def __init__(
        self,
        func: Any,
        limit_mb: float,
        workers: int,
        mode: str,
        timeout: Optional[float],
        name: str,
    ) -> None:
        module = getattr(func, "__module__", None)
        qualname = getattr(func, "__qualname__", "")
        if not module or not qualname or "<" in qualname:
            raise TypeError(
                f"isolate=True cannot send {name} to a worker: it is found there by module and "
                "name, as ProcessPoolExecutor pickles functions, so it must be a module-level "
                "function or a static method (not a lambda, a nested function or a closure)"
            )
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers={workers!r} is not valid: expected a whole number >= 1")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ValueError(f"timeout={timeout!r} is not valid: expected seconds above 0")
        self.module, self.qualname = module, qualname
        self.name = name
        self.limit_mb = limit_mb
        self.timeout = timeout
        self.pool = WorkerPool(int(limit_mb * MB), workers, mode, name, module)

    in_worker = staticmethod(in_worker)

    def _message(self, args: Any, kwargs: Any) -> bytes:
        return pickle.dumps(
            (self.module, self.qualname, tuple(args), dict(kwargs)),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def _oom(self, outcome: Outcome, processed: int = 0) -> WorkerOutOfMemory:
        return WorkerOutOfMemory(
            self.limit_mb, outcome.peak / MB, self.name, processed=processed, detail=outcome.detail
        )

    def call(self, args: Any, kwargs: Any) -> tuple[Any, float]:
        """One isolated call: its result and the worker's peak in MB."""
        outcome = self.pool.run(self._message(args, kwargs), self.timeout, self.name)
        outcome.raise_error()
        if not outcome.ok:
            raise self._oom(outcome)
        return outcome.value, outcome.peak / MB

    def call_chunked(
        self,
        count: int,
        arguments: Callable[[int, int], tuple[Any, Any]],
        sizer: BatchSizer,
        mark: Callable[[BaseException, int], None],
        combine: Callable[[list[Any]], Any],
    ) -> tuple[Any, float]:
        """Run ``count`` items in chunks, ``arguments(start, stop)`` giving each chunk's call
        arguments; returns the chunks' results combined, in order, and the largest peak in
        MB. A chunk's failure gets ``mark(exc, items before it)``."""
        limit = self.pool.limit
        results: list[Any] = []
        oversized: list[tuple[int, float]] = []
        retry: collections.deque[tuple[int, int]] = collections.deque()
        position = rss = peak = 0
        while retry or position < count:
            if retry:
                start, stop = retry.popleft()
            else:
                start = position
                stop = position = min(count, start + sizer.next_size(rss, limit))
            a, k = arguments(start, stop)
            try:
                outcome = self.pool.run(self._message(a, k), self.timeout, self.name)
                outcome.raise_error()
            except Exception as exc:
                mark(exc, start)
                raise
            peak = max(peak, outcome.peak)
            if outcome.ok:
                results.append(outcome.value)
                sizer.learn(stop - start, outcome.start, outcome.peak, limit)
                rss = outcome.start
                continue
            sizer.learn(stop - start, rss, max(outcome.peak, limit + 1), limit)  # halves next
            if stop - start == 1:
                oversized.append((start, outcome.peak / MB))
            else:
                middle = (start + stop) // 2
                retry.extendleft([(middle, stop), (start, middle)])
        if oversized:
            raise WorkerOutOfMemory(
                self.limit_mb,
                max(mb for _, mb in oversized),
                self.name,
                processed=count,
                oversized=oversized,
                results=combine(results),
            )
        return combine(results), peak / MB
