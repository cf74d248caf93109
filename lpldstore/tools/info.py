"""What a store holds, as a stable dict (``lpldstore info --json``) and as text (``lpldstore info``)."""

from __future__ import annotations

from typing import Any

from lpldstore.storage.reader import LabelStore
from lpldstore.tools.sizes import peer_layout_bytes, storage_bytes

__all__ = ["format_store_info", "store_info"]


def store_info(store: LabelStore) -> dict[str, Any]:
    """What ``lpldstore info --json`` prints: a stable contract (keys are only ever added)."""
    plan, dataset, relabel = store.plan, store.dataset, store.relabel
    committed = store.committed()
    sizes = storage_bytes(store)
    kept_indices = None if plan.composition == "seeded" else store.metadata().indices
    return {
        "source": store.where,
        "format_version": store.attrs.format_version,
        "integrity": {"bound": store.bound, "binding": store.binding},
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
        "storage_bytes": sizes,
        "peer_layout_bytes": peer_layout_bytes(plan, relabel, dataset.num_classes, kept_indices),
    } | _codec_info(store, sizes)


def _codec_info(store: LabelStore, sizes: dict[str, int]) -> dict[str, Any]:
    """The codec part of ``info``: its name, bytes per entry and the fidelity the writer measured."""
    fidelity = store.fidelity()
    return {
        "codec_label": store.attrs.logits_codec.label(),
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


def format_store_info(info: dict[str, Any]) -> str:
    """What ``lpldstore info`` prints, from :func:`store_info`'s dict."""
    lines: list[str] = []
    add = lines.append
    d, s, p = info["dataset"], info["schedule"], info["pruning"]
    add(f"store       {info['source']}")
    if "integrity" in info:
        add(f"integrity   format version {info['format_version']}: {info['integrity']['binding']}")
    add(
        f"dataset     {d['name']}: {d['num_images']} images {tuple(d['image_shape'])}, {d['num_classes']} classes, IPC {d['ipc']}"
    )
    add(
        f"schedule    {s['epochs']} epochs x {s['batches_per_epoch']} batches of {s['batch_size']} (last batch: {s['last_batch']})"
    )
    add(
        f"pruning     {p['strategy']} x{p['ratio']:g} (actual x{p['actual_ratio']:.2f}), seed {p['seed']}: "
        f"{p['entries_kept']} of {p['entries_planned']} entries kept, {p['entries_committed']} committed"
    )
    add(f"codec       {info.get('codec_label', info['codec']['name'])}")
    if "bytes_per_entry" in info:
        per = info["bytes_per_entry"]
        add(
            f"            {per['logits']:,.0f} logits bytes/entry, {per['labels']:,.0f} label bytes/entry (metadata included)"
        )
        fid = info["fidelity"]
        if fid is None:
            add("fidelity    not measured")
        else:
            kl = "inf" if fid["kl"] is None else f"{fid['kl']:.4g}"
            err = "unbounded" if fid["max_abs_error"] is None else f"{fid['max_abs_error']:.4g}"
            add(
                f"fidelity    at T={fid['temperature']:g} on {fid['rows']:,} rows: KL(orig||dec) {kl}, "
                f"KL(dec||orig) {fid['kl_reverse']:.4g}, top-1 agreement {fid['top1_agreement']:.4f}, "
                f"max |logit error| {err}"
            )
    add("")
    add(f"{'component':<16}{'bytes':>14}{'':>12}")
    for name, size in info["storage_bytes"].items():
        add(f"{name:<16}{size:>14,}{_human(size):>12}")
    peer = info["peer_layout_bytes"]
    labels = info["storage_bytes"]["total"] - info["storage_bytes"]["images"]
    add("")
    add("labels in the SRe2L/LPLD per-batch torch.save layout (same entries):")
    add(f"  {peer['num_files']:,} files + sidecar   {peer['total']:>14,}  {_human(peer['total'])}")
    add(
        f"  unpruned, {peer['unpruned_num_files']:,} files   {peer['unpruned_files']:>14,}  {_human(peer['unpruned_files'])}"
    )
    add(
        f"  this store, labels only     {labels:>14,}  {_human(labels)}  ({labels / peer['total']:.3f}x the peer files)"
    )
    return "\n".join(lines)
