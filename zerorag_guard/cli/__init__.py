"""The ``zerorag-guard`` command.

Each subcommand lives in its own module of this package, exposing ``register(subparsers)``
which adds its parser and sets ``func`` (``args -> exit code``) as the handler. ``COMMANDS``
lists them in the order ``--help`` shows them.

Exit codes: 0 success; 1 the command ran but could not do what was asked (an unreachable
``optimize`` target, a missing optional extra, a checkpoint file that is not one, a failure
inside the guarded process, a ``demo`` budget that no batch can keep); 2 bad usage
(argparse's own code: an unknown option, negative seconds, a target of 0, a pid that is not a
positive number or names no running process, a bad ``KEY=VALUE``); 3 the process runs but is not
guarded (no control socket answers for it). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn, Optional, Sequence

COMMANDS = (
    "report",
    "analyze",
    "cleanup",
    "monitor",
    "optimize",
    "debug",
    "leaks",
    "configure",
    "ps",
    "checkpoint",
    "demo",
)
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_PROCESS = 3
PROG = "zerorag-guard"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``prog: error: message``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="Keep batch and RAG-ingestion jobs inside a memory budget."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def fail(message: str, code: int, prog: str = PROG) -> int:
    """Print a one-line error on stderr and return ``code``."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns the exit code (see the module docstring)."""
    from ..control import server as control
    from ..control.client import ControlError, NoSuchProcess, RemoteError
    from ..errors import CheckpointError, ConfigError, MemoryBudgetExceeded
    from ._plot import MissingExtra

    # The command's own process is not a job to reach: it opens no control socket.
    control.set_enabled(False)
    args = build_parser().parse_args(argv)
    prog = f"{PROG} {args.command}"
    try:
        return int(args.func(args))
    except NoSuchProcess as exc:
        if not _running(exc.pid):  # an unknown pid is a bad argument
            return fail(f"argument --pid: no running process with pid {exc.pid}", EXIT_USAGE, prog)
        return fail(str(exc), EXIT_NO_PROCESS, prog)
    except RemoteError as exc:
        code = EXIT_USAGE if exc.error_type == "ConfigError" else EXIT_FAILED
        return fail(f"pid {args.pid}: {exc}", code, prog)
    except ConfigError as exc:
        return fail(str(exc), EXIT_USAGE, prog)
    except argparse.ArgumentTypeError as exc:
        return fail(str(exc), EXIT_USAGE, prog)
    except (MissingExtra, ControlError, OSError, MemoryBudgetExceeded, CheckpointError) as exc:
        return fail(str(exc), EXIT_FAILED, prog)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
