"""``lpldstore info | verify | card | pack | unpack``: reading and packaging whole stores."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lpldstore.cli._progress import add_quiet, show_progress
from lpldstore.errors import ConfigError

__all__ = ["register"]

_STORE_HELP = "store directory, .zip of one, or URL"


def _cmd_info(args: argparse.Namespace) -> int:
    from lpldstore.storage.reader import open_store
    from lpldstore.tools.info import format_store_info, store_info

    with open_store(args.store) as store:
        info = store_info(store)
    print(json.dumps(info, indent=2) if args.json else format_store_info(info))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from lpldstore.tools.verify import verify_store

    if args.teacher is not None:
        raise ConfigError(
            "`lpldstore verify` checks every chunk and record; re-running a teacher needs torch and the "
            f"pipeline: run `lpld verify {args.store} --teacher {args.teacher}` instead."
        )
    report = verify_store(args.store, require_bound=args.require_bound, progress=show_progress(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            print(problem)
        if report.unlisted:
            print(f"... and {report.unlisted} more problem(s) not listed")
        verdict = "OK" if report.ok else f"{len(report.problems) + report.unlisted} problem(s)"
        print(f"{report.source}: {report.committed}/{report.entries} entries committed; {verdict}")
        if report.binding:
            print(f"binding: {report.binding}")
        if report.fingerprint:
            print(f"fingerprint: {report.fingerprint}")
    return 0 if report.ok else 1


def _cmd_card(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lpldstore.tools.card import store_card

    citation = None
    if args.citation is not None:
        path = Path(args.citation)
        if not path.is_file() or path.stat().st_size > 1 << 20:
            raise ConfigError(f"Expected --citation to name a BibTeX file of at most 1 MB. Got {path}.")
        try:
            citation = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"Expected --citation to name a UTF-8 BibTeX file. Got {path} ({exc.reason})."
            ) from exc
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise ConfigError(
            f"Expected -o to name a file in an existing directory. Got {out}; {out.parent} does not exist."
        )
    text = store_card(args.store, license=args.license, citation=citation, report=args.report)
    if out is not None:
        # Written whole under a temporary name: an existing card is never left half-replaced.
        partial = out.with_name(f".{out.name}.partial")
        partial.write_text(text + "\n", encoding="utf-8")
        partial.replace(out)
    else:
        print(text)
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from lpldstore.tools.pack import checksum_path, pack_store

    digest = pack_store(args.store, args.out, progress=show_progress(args))
    print(f"packed {args.store} into {args.out}\nsha256 {digest} ({checksum_path(args.out)})")
    return 0


def _cmd_unpack(args: argparse.Namespace) -> int:
    from lpldstore.tools.pack import unpack_store

    count = unpack_store(args.zip, args.out, progress=show_progress(args))
    print(f"unpacked {count} files into {args.out}")
    return 0


def register(sub: Any) -> None:
    """Add the store commands to ``lpldstore``'s subcommands."""
    info = sub.add_parser("info", help="what a store holds, and its bytes per component")
    info.add_argument("store", help=_STORE_HELP)
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=_cmd_info)

    verify = sub.add_parser("verify", help="read every chunk and check it; exit 1 on any problem")
    verify.add_argument("store", help=_STORE_HELP)
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.add_argument(
        "--require-bound",
        action="store_true",
        help="fail a store without digests (format version 1 or 2, or one stripped to look like it)",
    )
    # The teacher check moved to `lpld verify`; the flag stays to say so instead of a usage error.
    verify.add_argument("--teacher", default=None, help=argparse.SUPPRESS)
    add_quiet(verify)
    verify.set_defaults(run=_cmd_verify)

    card = sub.add_parser("card", help="README-style Markdown summary of a store, for publishing")
    card.add_argument("store", help=_STORE_HELP)
    card.add_argument("-o", "--out", default=None, help="write to this file instead of stdout")
    card.add_argument("--license", default=None, help="the licence, as an SPDX id (e.g. cc-by-4.0)")
    card.add_argument("--citation", default=None, help="a BibTeX file citing the distilled dataset")
    card.add_argument(
        "--report", default=None, help="an `lpld run` report.json (default: the one beside a local store)"
    )
    card.set_defaults(run=_cmd_card)

    pack = sub.add_parser("pack", help="pack a store into one zip, with its SHA-256 beside it")
    pack.add_argument("store")
    pack.add_argument("out", help="OUT.zip")
    add_quiet(pack)
    pack.set_defaults(run=_cmd_pack)

    unpack = sub.add_parser("unpack", help="unpack a packed store into a directory")
    unpack.add_argument("zip")
    unpack.add_argument("out")
    add_quiet(unpack)
    unpack.set_defaults(run=_cmd_unpack)
