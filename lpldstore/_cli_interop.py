"""The interop subcommands of ``lpldstore``: import, export, pack, unpack, card, verify --teacher."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from lpldstore.interop._common import ImportOptions

__all__ = ["register"]


def _cmd_import(args: argparse.Namespace) -> int:
    from lpldstore.interop import import_labels

    options = ImportOptions(
        output_size=(args.output_size, args.output_size),
        epochs=args.epochs,
        temperature=args.temperature,
        topk_rule=args.topk_rule,
        fkd_rule=args.fkd_rule,
        batch_size=args.batch_size,
        num_classes=args.num_classes,
        dataset_name=args.name,
    )
    report = import_labels(args.layout, args.src, args.images, args.out, options, progress=not args.quiet)
    print(f"imported {report.entries} entries from {args.layout} layout into {report.store}")
    for key, note in report.notes.items():
        if note is not None:
            print(f"  {key}: {note}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from lpldstore.interop import export_store

    count = export_store(args.layout, args.store, args.out)
    print(f"wrote {count} batch files in the {args.layout} layout to {args.out}")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from lpldstore.pack import checksum_path, pack_store

    digest = pack_store(args.store, args.out)
    print(f"packed {args.store} into {args.out}\nsha256 {digest} ({checksum_path(args.out)})")
    return 0


def _cmd_unpack(args: argparse.Namespace) -> int:
    from lpldstore.pack import unpack_store

    count = unpack_store(args.zip, args.out)
    print(f"unpacked {count} files into {args.out}")
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from lpldstore.card import store_card

    text = store_card(args.store)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


def _verify_with_teacher(plain: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if args.teacher is None:
            return plain(args)
        from lpldstore._teacher_check import check_against_teacher
        from lpldstore.verify import verify_store

        if args.json:
            # One JSON document: the chunk check's keys plus "teacher".
            chunks = verify_store(args.store)
            code = 0 if chunks.ok else 1
        else:
            code = plain(args)
        report = check_against_teacher(
            args.store, args.teacher, entries=args.entries, override_kernel=args.override_kernel
        )
        if args.json:
            print(json.dumps({**chunks.to_dict(), "teacher": report.to_dict()}, indent=2))
        else:
            for problem in report.problems:
                print(f"teacher: {problem}")
            for e in report.entries:
                mark = "ok" if e.ok else "MISMATCH"
                print(
                    f"entry (epoch={e.epoch}, batch={e.batch}): max |teacher - stored| = {e.max_abs_diff:.4g} "
                    f"(tolerance {e.tolerance:.3g}) {mark}"
                )
            bad = sum(not e.ok for e in report.entries)
            verdict = "OK" if report.ok else f"{bad} of {len(report.entries)} entries differ"
            print(f"teacher check: {verdict}")
        return code if report.ok else 1

    return run


def register(sub: Any, verify: argparse.ArgumentParser) -> None:
    """Add the interop subcommands to ``lpldstore``'s parser and ``--teacher`` to ``verify``."""
    from lpldstore.interop._convert import EXPORT_LAYOUTS, IMPORT_LAYOUTS
    from lpldstore.interop.fkd import FKD_RULES

    imp = sub.add_parser("import", help="convert a peer label directory (+ its images) into a new store")
    imp.add_argument("--from", dest="layout", required=True, choices=sorted(IMPORT_LAYOUTS))
    imp.add_argument("src", help="the peer label directory")
    imp.add_argument("--images", required=True, help="ImageFolder of the distilled images")
    imp.add_argument("out", help="the new store directory")
    imp.add_argument("--output-size", type=int, default=224, help="relabel crop size (default 224)")
    imp.add_argument("--epochs", type=int, default=None, help="epochs of the original run (pruned prefixes)")
    imp.add_argument(
        "--temperature", type=float, default=None, help="T of stored probabilities (HALD 20, FKD 1)"
    )
    imp.add_argument("--topk-rule", choices=("mr", "ms"), default="mr", help="LPQLD top-k reconstruction")
    imp.add_argument("--fkd-rule", choices=FKD_RULES, default="marginal_smoothing")
    imp.add_argument("--batch-size", type=int, default=None, help="FKD: images per entry (default 256)")
    imp.add_argument("--num-classes", type=int, default=None, help="classes, where only top-k ids are stored")
    imp.add_argument("--name", default=None, help="dataset name (default: the images folder's name)")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(run=_cmd_import)

    exp = sub.add_parser("export", help="write a store's labels in a peer layout (with sidecar files)")
    exp.add_argument("--to", dest="layout", required=True, choices=sorted(EXPORT_LAYOUTS))
    exp.add_argument("store", help="store directory, .zip of one, or URL")
    exp.add_argument("out", help="the new label directory")
    exp.set_defaults(run=_cmd_export)

    pack = sub.add_parser("pack", help="pack a store into one zip, with its SHA-256 beside it")
    pack.add_argument("store")
    pack.add_argument("out", help="OUT.zip")
    pack.set_defaults(run=_cmd_pack)

    unpack = sub.add_parser("unpack", help="unpack a packed store into a directory")
    unpack.add_argument("zip")
    unpack.add_argument("out")
    unpack.set_defaults(run=_cmd_unpack)

    card = sub.add_parser("card", help="README-style Markdown summary of a store, for publishing")
    card.add_argument("store", help="store directory, .zip of one, or URL")
    card.add_argument("-o", "--out", default=None, help="write to this file instead of stdout")
    card.set_defaults(run=_cmd_card)

    verify.add_argument("--teacher", default=None, help="teacher checkpoint: re-run it on sampled entries")
    verify.add_argument("--entries", type=int, default=8, help="entries to re-run the teacher on (default 8)")
    verify.add_argument(
        "--override-kernel", action="store_true", help="replay a store made with another crop kernel anyway"
    )
    verify.set_defaults(run=_verify_with_teacher(verify.get_default("run")))
