"""``lpldstore prune | recode | upgrade``: derive a store from an existing one, without the teacher."""

from __future__ import annotations

import argparse
from typing import Any

from lpldstore.cli._progress import add_quiet, show_progress

__all__ = ["register"]


def _cmd_prune(args: argparse.Namespace) -> int:
    from lpldstore.storage.reader import open_store
    from lpldstore.tools.derive import prune
    from lpldstore.tools.sizes import storage_bytes

    path = prune(
        args.store,
        args.out,
        ratio=args.ratio,
        budget=args.budget,
        strategy=args.strategy,
        progress=show_progress(args),
    )
    with open_store(path) as store:
        print(
            f"{path}: {store.num_entries} entries ({store.plan.strategy} x{store.plan.ratio:g}), {storage_bytes(store)['total']:,} bytes"
        )
    return 0


def _cmd_recode(args: argparse.Namespace) -> int:
    from lpldstore.storage.reader import open_store
    from lpldstore.tools.derive import parse_codec, recode
    from lpldstore.tools.sizes import storage_bytes

    path = recode(
        args.store, args.out, codec=parse_codec(args.codec, args.temperature), progress=show_progress(args)
    )
    with open_store(path) as store:
        fid = store.fidelity()
        print(f"{path}: codec {store.attrs.logits_codec.label()}, {storage_bytes(store)['total']:,} bytes")
        if fid is not None:
            print(
                f"fidelity vs the parent's logits at T={fid.temperature:g}: KL {fid.kl:.3g}, top-1 {fid.top1_agreement:.4f}"
            )
    return 0


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from lpldstore.storage.reader import open_store
    from lpldstore.tools.derive import upgrade

    path = upgrade(args.store, args.out, progress=show_progress(args))
    with open_store(path) as store:
        print(
            f"{path}: format version {store.attrs.format_version}, {store.num_entries} entries; {store.binding}"
        )
    return 0


def register(sub: Any) -> None:
    """Register ``prune``, ``recode`` and ``upgrade`` on the ``lpldstore`` parser's subcommands."""
    p = sub.add_parser("prune", help="derive a store keeping fewer entries (by ratio or byte budget)")
    p.add_argument("store", help="the parent store directory")
    p.add_argument("out", help="where to write the derived store (must not exist)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--ratio", type=float, help="keep 1/RATIO of the full schedule's entries")
    size.add_argument("--budget", help="keep as many entries as fit, images included, e.g. 100MB")
    p.add_argument("--strategy", choices=("prefix", "random", "epoch"), help="default: the parent's")
    add_quiet(p)
    p.set_defaults(run=_cmd_prune)
    r = sub.add_parser("recode", help="derive a store with the logits in another codec")
    r.add_argument("store", help="the parent store directory")
    r.add_argument("out", help="where to write the derived store (must not exist)")
    r.add_argument(
        "--codec", required=True, help="NAME[:key=value,...], e.g. quantized:bits=4, topk:k=100,tail=MR"
    )
    r.add_argument("--temperature", type=float, help="fidelity temperature (default: 20)")
    add_quiet(r)
    r.set_defaults(run=_cmd_recode)
    u = sub.add_parser(
        "upgrade", help="rewrite a format version 1 or 2 store as version 3 (digests), after verifying it"
    )
    u.add_argument("store", help="the store directory to upgrade (left as it is)")
    u.add_argument("out", help="where to write the version-3 store (must not exist)")
    add_quiet(u)
    u.set_defaults(run=_cmd_upgrade)
