"""The ``lpldstore`` command line: ``info`` and ``verify``.

``--json`` output is a stable contract: keys are only ever added, never renamed or removed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from lpldstore import _cli_interop
from lpldstore.derive import add_commands as add_derive_commands
from lpldstore.errors import LpldStoreError
from lpldstore.reader import LabelStore, open_store
from lpldstore.sizes import peer_layout_bytes, storage_bytes
from lpldstore.verify import verify_store

__all__ = ["info_dict", "main"]


def info_dict(store: LabelStore) -> dict[str, Any]:
    """What ``lpldstore info --json`` prints."""
    plan, dataset, relabel = store.plan, store.dataset, store.relabel
    committed = store.committed()
    kept_indices = None if plan.composition == "seeded" else store.metadata().indices
    return {
        "source": store.where,
        "format_version": store.attrs.format_version,
        "dataset": {
            "name": dataset.name,
            "num_classes": dataset.num_classes,
            "num_images": dataset.num_images,
            "image_shape": list(dataset.image_shape),
            "ipc": dataset.ipc,
        },
        "schedule": {
            "epochs": plan.epochs,
            "batch_size": plan.batch_size,
            "batches_per_epoch": plan.batches_per_epoch,
            "last_batch": plan.last_batch,
        },
        "pruning": {
            "strategy": plan.strategy,
            "ratio": plan.ratio,
            "actual_ratio": plan.actual_ratio,
            "seed": plan.seed,
            "entries_kept": plan.num_kept,
            "entries_planned": plan.total_entries,
            "entries_committed": int(committed.sum()),
        },
        "relabel": {"teacher": relabel.teacher, "output_size": list(relabel.output_size), "mix": relabel.mix},
        "codec": store.codec.to_dict(),
        "storage_bytes": storage_bytes(store),
        "peer_layout_bytes": peer_layout_bytes(plan, relabel, dataset.num_classes, kept_indices),
    } | codec_info(store)


def codec_info(store: LabelStore) -> dict[str, Any]:
    """The codec part of ``info``: its name, bytes per entry and the fidelity the writer measured."""
    sizes = storage_bytes(store)
    fidelity = store.fidelity()
    return {
        "codec_label": store.codec.codec(store.dataset.num_classes).label(),
        "bytes_per_entry": {
            "logits": sizes["logits"] / store.num_entries,
            "labels": (sizes["total"] - sizes["images"]) / store.num_entries,
        },
        "fidelity": None if fidelity is None else fidelity.to_dict(),
    }


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def _print_info(info: dict[str, Any]) -> None:
    d, s, p = info["dataset"], info["schedule"], info["pruning"]
    print(f"store       {info['source']}")
    print(
        f"dataset     {d['name']}: {d['num_images']} images {tuple(d['image_shape'])}, {d['num_classes']} classes, IPC {d['ipc']}"
    )
    print(
        f"schedule    {s['epochs']} epochs x {s['batches_per_epoch']} batches of {s['batch_size']} (last batch: {s['last_batch']})"
    )
    print(
        f"pruning     {p['strategy']} x{p['ratio']:g} (actual x{p['actual_ratio']:.2f}), seed {p['seed']}: "
        f"{p['entries_kept']} of {p['entries_planned']} entries kept, {p['entries_committed']} committed"
    )
    print(f"codec       {info.get('codec_label', info['codec']['name'])}")
    if "bytes_per_entry" in info:
        per = info["bytes_per_entry"]
        print(
            f"            {per['logits']:,.0f} logits bytes/entry, {per['labels']:,.0f} label bytes/entry (metadata included)"
        )
        fid = info["fidelity"]
        if fid is None:
            print("fidelity    not measured")
        else:
            kl = "inf" if fid["kl"] is None else f"{fid['kl']:.4g}"
            err = "unbounded" if fid["max_abs_error"] is None else f"{fid['max_abs_error']:.4g}"
            print(
                f"fidelity    at T={fid['temperature']:g} on {fid['rows']:,} rows: KL(orig||dec) {kl}, "
                f"KL(dec||orig) {fid['kl_reverse']:.4g}, top-1 agreement {fid['top1_agreement']:.4f}, "
                f"max |logit error| {err}"
            )
    print()
    print(f"{'component':<16}{'bytes':>14}{'':>12}")
    for name, size in info["storage_bytes"].items():
        print(f"{name:<16}{size:>14,}{_human(size):>12}")
    peer = info["peer_layout_bytes"]
    labels = info["storage_bytes"]["total"] - info["storage_bytes"]["images"]
    print()
    print("labels in the SRe2L/LPLD per-batch torch.save layout (same entries):")
    print(f"  {peer['num_files']:,} files + sidecar   {peer['total']:>14,}  {_human(peer['total'])}")
    print(
        f"  unpruned, {peer['unpruned_num_files']:,} files   {peer['unpruned_files']:>14,}  {_human(peer['unpruned_files'])}"
    )
    print(
        f"  this store, labels only     {labels:>14,}  {_human(labels)}  ({labels / peer['total']:.3f}x the peer files)"
    )


def _cmd_info(args: argparse.Namespace) -> int:
    with open_store(args.store) as store:
        info = info_dict(store)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
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
