"""The ``lpldstore`` command line.

One subcommand per whole-store tool: ``info``, ``verify``, ``card``, ``pack``, ``unpack``
(:mod:`lpldstore.cli._store`), ``prune``, ``recode``, ``upgrade`` (:mod:`lpldstore.cli._derive`), ``import``,
``export`` (:mod:`lpldstore.cli._interop`). Each command imports what it needs when it runs, so
reading a store never imports torch. ``--json`` output is a stable contract: keys are only ever
added, never renamed or removed.

Errors never reach the user as a traceback: a library error, a file system error or a missing
optional dependency is one line on stderr and exit status 2; Ctrl-C is exit status 130.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lpldstore._version import __version__
from lpldstore.cli import _derive, _interop, _store
from lpldstore.cli._errors import EXIT_ERROR, EXIT_INTERRUPTED, EXTRAS, run_command

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXTRAS", "main", "run_command"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpldstore", description="Inspect, check and convert lpldstore soft-label stores."
    )
    parser.add_argument("--version", action="version", version=f"lpldstore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (_store, _derive, _interop):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command("lpldstore", args.command, lambda: args.run(args))
