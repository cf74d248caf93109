"""``lpldstore import | export``: the peers' label directories into stores and back (needs torch)."""

from __future__ import annotations

import argparse
from typing import Any

from lpldstore.cli._progress import add_quiet, show_progress
from lpldstore.interop.layouts import EXPORT_LAYOUTS, FKD_RULES, IMPORT_LAYOUTS

__all__ = ["register"]


def _cmd_import(args: argparse.Namespace) -> int:
    from lpldstore.interop import ImportOptions, import_labels

    options = ImportOptions(
        output_size=None if args.output_size is None else (args.output_size, args.output_size),
        epochs=args.epochs,
        temperature=args.temperature,
        topk_rule=args.topk_rule,
        fkd_rule=args.fkd_rule,
        batch_size=args.batch_size,
        num_classes=args.num_classes,
        dataset_name=args.name,
        mean=None if args.mean is None else tuple(args.mean),
        std=None if args.std is None else tuple(args.std),
        teacher=args.teacher,
        ignore_sidecar=args.ignore_sidecar,
    )
    report = import_labels(
        args.layout, args.src, args.images, args.out, options, progress=show_progress(args)
    )
    print(f"imported {report.entries} entries from {args.layout} layout into {report.store}")
    for key, note in report.notes.items():
        if note is not None:
            print(f"  {key}: {note}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from lpldstore.interop import export_store

    report = export_store(args.layout, args.store, args.out, images=args.images, progress=show_progress(args))
    print(f"wrote {report.files} batch files in the {args.layout} layout to {report.out}")
    print(f"  sidecar: {report.sidecar} (what the layout cannot hold; `lpldstore import` reads it back)")
    if report.images:
        print(f"  images: {report.images} (an ImageFolder in the store's order)")
    for key, note in report.notes.items():
        print(f"  {key}: {note}")
    return 0


def register(sub: Any) -> None:
    """Add ``import`` and ``export`` to ``lpldstore``'s subcommands."""

    imp = sub.add_parser("import", help="convert a peer label directory (+ its images) into a new store")
    imp.add_argument("--from", dest="layout", required=True, choices=IMPORT_LAYOUTS)
    imp.add_argument("src", help="the peer label directory")
    imp.add_argument("--images", required=True, help="ImageFolder of the distilled images")
    imp.add_argument("out", help="the new store directory")
    imp.add_argument(
        "--output-size",
        type=int,
        default=None,
        help="relabel crop size (default: the export sidecar's, else the size of square images)",
    )
    imp.add_argument(
        "--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="the teacher's normalization mean"
    )
    imp.add_argument(
        "--std", type=float, nargs=3, metavar=("R", "G", "B"), help="the teacher's normalization std"
    )
    imp.add_argument("--teacher", default=None, help="the teacher's name, recorded in the store")
    imp.add_argument("--epochs", type=int, default=None, help="epochs of the original run (pruned prefixes)")
    imp.add_argument(
        "--temperature", type=float, default=None, help="T of stored probabilities (HALD 20, FKD 1)"
    )
    imp.add_argument("--topk-rule", choices=("mr", "ms"), default="mr", help="LPQLD top-k reconstruction")
    imp.add_argument("--fkd-rule", choices=FKD_RULES, default="marginal_smoothing")
    imp.add_argument("--batch-size", type=int, default=None, help="FKD: images per entry (default 256)")
    imp.add_argument("--num-classes", type=int, default=None, help="classes, where only top-k ids are stored")
    imp.add_argument("--name", default=None, help="dataset name (default: the images folder's name)")
    imp.add_argument(
        "--ignore-sidecar", action="store_true", help="read an exported directory as plain peer files"
    )
    add_quiet(imp)
    imp.set_defaults(run=_cmd_import)

    exp = sub.add_parser("export", help="write a store's labels in a peer layout (with sidecar files)")
    exp.add_argument("--to", dest="layout", required=True, choices=EXPORT_LAYOUTS)
    exp.add_argument("store", help="store directory, .zip of one, or URL")
    exp.add_argument("out", help="the new label directory (its sidecar OUT.lpldstore.json goes beside it)")
    exp.add_argument("--images", default=None, help="also write the images as an ImageFolder here (PNG)")
    add_quiet(exp)
    exp.set_defaults(run=_cmd_export)
