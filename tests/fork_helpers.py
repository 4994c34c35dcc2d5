"""Run a function in a forked child and get its JSON-able result back through a pipe."""

from __future__ import annotations

import json
import os
from typing import Any, Callable


def in_forked_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``body()`` in a child made by ``os.fork``; its dict comes back, its failure fails here."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(body()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    return json.loads(data)  # type: ignore[no-any-return]
