"""The per-user run directory: where the control sockets and the memory ledgers live.

``$XDG_RUNTIME_DIR/zerorag-guard`` when that is this user's directory, else
``<tmp>/zerorag-guard-<uid>``; always a real directory of this user with mode 0700. A low module
of its own: the memory ledger (the core) and the control socket (a front end) both use it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Optional


class ControlError(Exception):
    """The control socket cannot be used (an unsafe directory, a path too long)."""


def socket_dir(environ: Optional[dict[str, str]] = None) -> Path:
    """The per-user directory holding the control sockets (not created here)."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        try:
            st = os.stat(runtime)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            return Path(runtime) / "zerorag-guard"
    return Path(tempfile.gettempdir()) / f"zerorag-guard-{os.getuid()}"


def check_private_dir(path: Path, create: bool = False) -> Path:
    """Make sure ``path`` is a real directory of this user with mode 0700 (creating it if asked).

    A directory this user owns with looser bits is tightened; one owned by someone else, or a
    symlink, raises :class:`ControlError`, as its owner could read or replace the sockets.
    """
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError(
            f"{path} is not a directory (a symlink or file in its place); "
            "refusing to use it for control sockets"
        )
    if st.st_uid != os.getuid():
        raise ControlError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); "
            "refusing to use it for control sockets"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path
