"""Whether a command shows progress bars: on an interactive terminal, unless ``--quiet``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_quiet", "show_progress"]


def add_quiet(parser: Any) -> None:
    """Give a subcommand ``--quiet`` (no progress bar; bars are off anyway when stderr is not a terminal)."""
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def show_progress(args: argparse.Namespace) -> bool:
    # tqdm bars with ETA on stderr; a log file or a pipe gets none, so output stays clean.
    return not getattr(args, "quiet", False) and sys.stderr.isatty()
