"""Checkpoints: a budget's loops resume after a kill where the last completed batch left off.

``memory_budget(checkpoint=PATH)`` keeps one small JSON file. Each loop over
:meth:`~zerorag_guard.MemoryBudget.chunks` in the block is numbered (1, 2, ...), and the file
says which loop was running, how many of its items were done, and the batch in flight (its
first item and size) when the process stopped. It is written atomically (a temporary file,
``fsync``, ``rename``, ``fsync`` of the directory) when a batch is handed out and when it
completes, so a kill at any instant leaves the previous state or the next, never a mix.

A later run of the same job skips what is done: loops a previous run finished yield nothing,
the loop that was running starts after its done items, and a loop killed with a batch in
flight starts with half that batch (the kill is a measurement too). The block that ends
without an exception marks the file ``complete``: a rerun then does nothing and says so, until
``reset_checkpoint=True``. Iterating the same items in the same order is the caller's side of
the contract; ``key=`` (a function of an item, giving a string or a number) checks it: the
items at the cursor must have the keys recorded, or the run refuses to resume.

Only one run may use a checkpoint at a time (an ``flock`` on ``PATH.lock``). A file that is
not a checkpoint (truncated, garbage, another format) raises :class:`CheckpointError` naming
it: a job never restarts from zero silently.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any, Callable, Optional, Union

from ..errors import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - not Unix: no cross-process lock
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("zerorag_guard")
FORMAT = "zerorag_guard.checkpoint/1"
_FIELDS = {"format": str, "loop": int, "done": int, "loop_complete": bool, "complete": bool}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _problem(state: Any) -> Optional[str]:
    """What makes ``state`` not a checkpoint, or None."""
    if not isinstance(state, dict):
        return f"holds {type(state).__name__}, not an object"
    for field, kind in _FIELDS.items():
        if not isinstance(state.get(field), kind):
            return f"field {field!r} is missing or not {kind.__name__}"
    if state["format"] != FORMAT:
        return f"format {state['format']!r}, expected {FORMAT!r}"
    if state["loop"] < 0 or state["done"] < 0:
        return "negative loop or item count"
    flight = state.get("in_flight")
    if flight is not None and not (
        isinstance(flight, dict) and isinstance(flight.get("size"), int) and flight["size"] > 0
    ):
        return "field 'in_flight' is not a batch with a size"
    finished = state.get("loops_done", [])
    if not isinstance(finished, list) or not all(isinstance(n, int) for n in finished):
        return "field 'loops_done' is not a list of item counts"
    return None


def read_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint at ``path``, checked; :class:`CheckpointError` if it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"cannot be read ({exc})") from None
    try:
        state = json.loads(text)
    except ValueError as exc:
        what = "is empty" if not text.strip() else f"is not valid JSON ({exc})"
        raise CheckpointError(
            path,
            f"{what}: it is not a checkpoint this library wrote (truncated or overwritten?); "
            "refusing to start over: delete it or pass reset_checkpoint=True",
        ) from None
    problem = _problem(state)
    if problem is not None:
        raise CheckpointError(
            path,
            f"is not a zerorag_guard checkpoint ({problem}); refusing to start over: delete it "
            "or pass reset_checkpoint=True",
        )
    return state


def _key_text(key: Callable[[Any], Any], item: Any, path: str) -> str:
    value = key(item)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise CheckpointError(
            path, f"key= returned {type(value).__name__} {value!r}; expected a string or a number"
        )
    return str(value)


class Checkpoint:
    """One job's checkpoint file: the loops a run makes, numbered in order.

    ``Checkpoint(path)`` is what ``memory_budget(checkpoint=path)`` makes for each use of the
    block; a guarded store keeps one across its writes (each write a loop).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        key: Optional[Callable[[Any], Any]] = None,
        reset: bool = False,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"checkpoint={path!r} is not valid: expected a file path")
        if key is not None and not callable(key):
            raise ValueError(f"key={key!r} is not valid: expected a function of an item")
        self.path = os.path.abspath(os.fspath(path))
        self.key = key
        self._reset = reset
        self._loops = 0  # loops this run has started
        self._state: Optional[dict[str, Any]] = None
        self._lock_fd: Optional[int] = None

    # -- the file
    def _lock(self) -> None:
        if self._lock_fd is not None or fcntl is None:
            return
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CheckpointError(
                self.path, f"in use by another run (pid {holder}): one run at a time"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def _write(self, state: dict[str, Any]) -> None:
        state["updated"] = _now()
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, (json.dumps(state, indent=1) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        directory = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._state = state

    def _load(self) -> dict[str, Any]:
        if self._reset or not os.path.exists(self.path):
            self._reset = False  # once: later loops of this run follow the file
            state = {
                "format": FORMAT,
                "loop": 0,
                "done": 0,
                "loop_complete": True,
                "complete": False,
                "loops_done": [],
                "in_flight": None,
                "last_batch": None,
                "started": _now(),
                "runs": 0,
            }
            self._write(state)
            return state
        return read_checkpoint(self.path)

    # -- a run and its loops
    def open(self) -> None:
        """Lock the file and read it (a run of the block begins)."""
        self._lock()
        try:
            state = self._load()
            if self._loops == 0:  # a new run (a guarded store opens once per write)
                state["runs"] = int(state.get("runs", 0)) + 1
                self._write(state)
            self._state = state
        except BaseException:
            self._unlock()
            raise

    def close(self, complete: bool) -> None:
        """The run (or, for a guarded store, one write) ends; ``complete`` when the block
        finished without an exception and the job is done."""
        try:
            state = self._state
            if complete and state is not None and not state["complete"]:
                state["complete"] = True
                state["in_flight"] = None
                self._write(state)
        finally:
            self._state = None
            self._unlock()

    def start_loop(self) -> LoopCheckpoint:
        """The next loop of this run, told what a previous run did of it."""
        if self._state is None:
            self.open()
        assert self._state is not None
        self._loops += 1
        return LoopCheckpoint(self, self._loops, self._state)


class LoopCheckpoint:
    """One loop's view of its checkpoint: what to skip, how large to start, what to record."""

    def __init__(self, owner: Checkpoint, number: int, state: dict[str, Any]) -> None:
        self.owner = owner
        self.number = number
        self.path = owner.path
        finished = state.get("loops_done", [])
        #: Items a previous run completed in this loop: skip them.
        self.skip = 0
        #: Whether a previous run finished this loop (or the whole block): nothing to do.
        self.finished = False
        #: Half the batch a kill interrupted, the first batch's size; None if there was none.
        self.start_size: Optional[int] = None
        self._expect_last = self._expect_next = None
        #: Whether a previous run finished the whole block (a rerun then does nothing).
        self.job_complete = bool(state["complete"])
        if (
            state["complete"]
            or number < state["loop"]
            or (number == state["loop"] and state["loop_complete"])
        ):
            self.finished = True
            self.skip = finished[number - 1] if number - 1 < len(finished) else state["done"]
        elif number == state["loop"]:
            self.skip = state["done"]
            flight = state.get("in_flight")
            if flight is not None:
                self.start_size = max(1, int(flight["size"]) // 2)
                self._expect_next = flight.get("first_key")
            self._expect_last = state.get("last_key")
        else:  # a loop no run reached: it starts now
            state.update(loop=number, done=0, loop_complete=False, in_flight=None, last_key=None)
            state["loops_done"] = finished[: number - 1]
            owner._write(state)
        self._state = state

    def describe(self) -> str:
        state = self._state
        when = state.get("updated", "?")
        if state["complete"]:
            return (
                f"checkpoint {self.path}: the job was completed at {when} ({self.skip} items in "
                f"loop {self.number}); nothing to do (reset_checkpoint=True starts over)"
            )
        return (
            f"checkpoint {self.path}: loop {self.number} was completed by a previous run "
            f"({self.skip} items); skipped"
        )

    def check_skipped(self, index: int, item: Any) -> None:
        """Called with the last item skipped (``index`` = skip - 1): its key must match."""
        key = self.owner.key
        if key is None or self._expect_last is None:
            return
        got = _key_text(key, item, self.path)
        if got != self._expect_last:
            raise CheckpointError(
                self.path,
                f"the input changed: item {index} (the last one done) has key {got!r}, the "
                f"checkpoint recorded {self._expect_last!r}; iterate the same items in the same "
                "order, or pass reset_checkpoint=True to start over",
            )

    def too_short(self) -> CheckpointError:
        return CheckpointError(
            self.path,
            f"the input changed: it has fewer items than the {self.skip} the checkpoint has "
            f"done in loop {self.number}; pass reset_checkpoint=True to start over",
        )

    def begin(self, start: int, batch: list[Any]) -> None:
        """A batch of items ``start``.. is handed out."""
        key = self.owner.key
        first = None if key is None else _key_text(key, batch[0], self.path)
        if self._expect_next is not None:
            expected, self._expect_next = self._expect_next, None
            if first != expected:
                raise CheckpointError(
                    self.path,
                    f"the input changed: item {start} (the first after the cursor) has key "
                    f"{first!r}, the checkpoint recorded {expected!r}; iterate the same items "
                    "in the same order, or pass reset_checkpoint=True to start over",
                )
        state = self._state
        state.pop("interrupted", None)
        state["in_flight"] = {
            "start": start,
            "size": len(batch),
            "since": _now(),
            "pid": os.getpid(),
            "first_key": first,
        }
        self.owner._write(state)

    def finish(self, done: int, batch: list[Any]) -> None:
        """The batch in flight completed: ``done`` items of this loop are done."""
        key = self.owner.key
        state = self._state
        state["last_batch"] = {"size": len(batch), "finished": _now()}
        state["done"] = done
        state["in_flight"] = None
        state["last_key"] = None if key is None else _key_text(key, batch[-1], self.path)
        self.owner._write(state)

    def interrupt(self) -> None:
        """The loop stopped on an exception or was abandoned (not killed): the batch in flight
        did not complete, and no kill sized it, so the next run starts it afresh."""
        state = self._state
        flight = state.get("in_flight")
        if flight is None or state["loop"] != self.number:
            return
        state["in_flight"] = None
        state["interrupted"] = {"start": flight["start"], "size": flight["size"], "at": _now()}
        self.owner._write(state)

    def end(self, done: int) -> None:
        """The loop ran out of items: it is finished, with ``done`` items."""
        state = self._state
        if state["loop"] != self.number or state["loop_complete"]:
            return
        state.update(done=done, in_flight=None, loop_complete=True)
        state["loops_done"] = [*state.get("loops_done", [])[: self.number - 1], done]
        self.owner._write(state)
