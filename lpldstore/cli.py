"""The ``lpldstore`` command line: ``info`` and ``verify``.

``--json`` output is a stable contract: keys are only ever added, never renamed or removed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from lpldstore import _cli_interop
from lpldstore.derive import add_commands as add_derive_commands
from lpldstore.errors import LpldStoreError
from lpldstore.info import format_store_info, store_info
from lpldstore.reader import open_store
from lpldstore.verify import verify_store

__all__ = ["main"]


def _cmd_info(args: argparse.Namespace) -> int:
    with open_store(args.store) as store:
        info = store_info(store)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_store_info(info))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    report = verify_store(args.store)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            print(problem)
        verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{report.source}: {report.committed}/{report.entries} entries committed; {verdict}")
    return 0 if report.ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lpldstore", description="Inspect and check lpldstore soft-label stores."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="what a store holds, and its bytes per component")
    info.add_argument("store", help="store directory, .zip of one, or URL")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=_cmd_info)
    verify = sub.add_parser("verify", help="read every chunk and check it; exit 1 on any problem")
    verify.add_argument("store", help="store directory, .zip of one, or URL")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(run=_cmd_verify)
    _cli_interop.register(sub, verify)
    add_derive_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except LpldStoreError as exc:
        print(f"lpldstore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output went away (`lpldstore info S | head`): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
