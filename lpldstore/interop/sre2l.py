"""SRe2L / CDA (and CV-DD, FADRM, D4M): ``<dir>/epoch_<e>/batch_<b>.tar``, no sidecar.

Each file is ``torch.save([coords, flip, mix_index, mix_lam, mix_bbox, logits])`` of one batch
(``docs/reference/peer-formats.md`` §2). The files carry no image ids: the composition is replayed
from the writer's sampler (seed 42, ``RandomSampler`` + ``BatchSampler(drop_last=False)``, one
generator over all epochs), as SRe2L's own reader does. The last batch of an epoch is short.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lpldstore.errors import InteropError
from lpldstore.format.plan import PruningPlan
from lpldstore.interop._common import (
    PEER_SEED,
    BatchRef,
    ImportOptions,
    PeerBatch,
    PeerSource,
    RecordProblem,
    normalized_coords,
    num_classes_of,
    prefix_plan,
    record_length,
    relabel_for,
    replay_sampler,
    sre2l_record,
)
from lpldstore.interop._images import ImageSet
from lpldstore.interop._safe_load import safe_torch_load
from lpldstore.storage.reader import LabelStore

__all__ = ["check_six_items", "epoch_batch_files", "export", "first_record", "scan", "store_record"]

_EPOCH = re.compile(r"epoch_(\d+)")
_BATCH = re.compile(r"batch_(\d+)\.tar")


def epoch_batch_files(src: Path) -> dict[tuple[int, int], Path]:
    """Every ``epoch_<e>/batch_<b>.tar`` under ``src`` by (epoch, batch); other entries are ignored."""
    if not src.is_dir():
        raise InteropError(f"Expected a label directory at {src}. Got no such directory.")
    files: dict[tuple[int, int], Path] = {}
    for epoch_dir in src.iterdir():
        m = _EPOCH.fullmatch(epoch_dir.name)
        if not (m and epoch_dir.is_dir()):
            continue
        for f in epoch_dir.iterdir():
            mb = _BATCH.fullmatch(f.name)
            if mb:
                files[int(m.group(1)), int(mb.group(1))] = f
    if not files:
        raise InteropError(f"Expected epoch_<e>/batch_<b>.tar files under {src}. Got none.")
    return files


def first_record(files: dict[tuple[int, int], Path]) -> tuple[Any, int]:
    """The record of the earliest file and its batch size (length of item 1, as SRe2L reads it)."""
    items = safe_torch_load(files[min(files)])
    try:
        return items, record_length(items)
    except RecordProblem as exc:
        raise InteropError(f"{files[min(files)]}: {exc}") from exc


def check_six_items(items: Any, path: Path, layout: str) -> None:
    """Refuse another family member's records early, naming the ``--from`` that reads them."""
    if isinstance(items, list | tuple) and len(items) == 7:
        raise InteropError(
            f"{path}: expected {layout}'s 6-item records. Got 7 items, the 7th the batch's dataset ids: "
            "G-VBSM's layout. Import it with --from gvbsm."
        )
    if isinstance(items, list | tuple) and len(items) == 8:
        raise InteropError(
            f"{path}: expected {layout}'s 6-item records. Got 8 items (EDC's layout, with a patch-shuffle "
            "permutation), which lpldstore does not import."
        )


def _check_problems(problems: list[str]) -> None:
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InteropError(f"Cannot import: {len(problems)} problem(s), nothing written:\n  {shown}{more}")


def reader(path: Path, parse: Callable[[Any], PeerBatch]) -> Callable[[], PeerBatch]:
    def read() -> PeerBatch:
        return parse(safe_torch_load(path))

    return read


def scan_batch_files(
    src: Path, images: ImageSet, options: ImportOptions
) -> tuple[dict[tuple[int, int], Path], list[Any], PruningPlan]:
    """The ``epoch_e/batch_b.tar`` files of ``src``, the first record, and the prefix plan they fill."""
    files = epoch_batch_files(src)
    items, batch_size = first_record(files)
    plan, problems = prefix_plan(
        num_images=len(images),
        batch_size=batch_size,
        last_batch="pad",
        present=list(files),
        epochs=options.epochs,
        where=str(src),
    )
    _check_problems(problems)
    return files, items, plan


def source_of(
    layout: str,
    plan: PruningPlan,
    items: Sequence[Any],
    options: ImportOptions,
    refs: list[BatchRef],
    *,
    teacher: str,
    notes: dict[str, str],
) -> PeerSource:
    """A peer source whose records are the six-item SRe2L list (``items``: the first one read)."""
    return PeerSource(
        layout=layout,
        plan=plan,
        relabel=relabel_for(options, mix=items[2] is not None, teacher=teacher, crop_scale=(0.08, 1.0)),
        num_classes=num_classes_of(items, f"{layout} record"),
        refs=refs,
        notes=notes,
    )


def scan(src: Path, images: ImageSet, options: ImportOptions) -> PeerSource:
    files, items, plan = scan_batch_files(src, images, options)
    check_six_items(items, files[min(files)], "sre2l")
    composition = list(replay_sampler(len(images), plan.batch_size, plan.epochs))
    refs = []
    for e, b in sorted(files):
        ids = composition[e][b]
        path = files[e, b]
        refs.append(
            BatchRef(
                e,
                b,
                str(path),
                reader(path, functools.partial(sre2l_record, n=len(ids), hw=images.hw, indices=ids)),
            )
        )
    return source_of(
        "sre2l",
        plan,
        items,
        options,
        refs,
        teacher="unknown (SRe2L import)",
        notes={"composition": "replayed RandomSampler + BatchSampler, seed 42"},
    )


# -- export ------------------------------------------------------------------------------------


def store_record(store: LabelStore, position: int, exact_lams: dict[int, float]) -> list[Any]:
    """One entry as the SRe2L writer saves it (types included: NumPy int64 box, Python float lambda)."""
    entry = store.entry_at(position)
    coords = normalized_coords(entry.crops, store.dataset.image_shape[:2])
    flips = torch.from_numpy(np.array(entry.flips, dtype=bool))
    logits = torch.from_numpy(np.array(entry.logits, dtype=np.float16))
    if store.relabel.mix == "none":
        return [coords, flips, None, None, None, logits]
    lam = exact_lams.get(position, float(np.float32(entry.mix_lam)))
    box = [np.int64(v) for v in entry.mix_box]
    mix_index = torch.from_numpy(np.array(entry.mix_index, dtype=np.int64))
    return [coords, flips, mix_index, lam, box, logits]


def export(store: LabelStore, out: Path, exact_lams: dict[int, float], *, progress: bool = False) -> int:
    """Write ``out/epoch_<e>/batch_<b>.tar``; the composition must be SRe2L's seed-42 replay."""
    plan = store.plan
    meta = store.metadata()
    if not meta.committed.all():
        raise InteropError(
            f"{store.where}: expected a complete store. Got {int((~meta.committed).sum())} uncommitted entries."
        )
    to_lpld = (
        "Export it with --to lpld, whose sampler file carries the batches, or make the store with "
        "PruningPlan(sampler='sre2l', seed=42, last_batch='pad') to export it to SRe2L exactly."
    )
    if plan.last_batch != "pad" and plan.num_images % plan.batch_size:
        raise InteropError(
            f"{store.where}: SRe2L files keep the short last batch (drop_last=False); this store drops it. {to_lpld}"
        )
    if plan.strategy == "random":
        raise InteropError(
            f"{store.where}: SRe2L readers need every batch of each epoch they train on; this store keeps a random "
            "sample of them. Re-prune it with strategy 'prefix' or 'epoch', or export with --to lpld."
        )
    # A seeded SRe2L-sampler plan holds these batches by construction (the writer checks every
    # entry's indices against the plan); anything else is compared with the replay, entry by entry.
    if not (plan.composition == "seeded" and plan.sampler == "sre2l" and plan.seed == PEER_SEED):
        replay = list(
            replay_sampler(
                plan.num_images, plan.batch_size, int(store.keys[-1][0]) + 1 if store.num_entries else 0
            )
        )
        for pos, (e, b) in enumerate(store.keys):
            n = plan.batch_length(int(b))
            if not np.array_equal(meta.indices[pos, :n], replay[int(e)][int(b)]):
                raise InteropError(
                    f"{store.where}: entry (epoch={e}, batch={b}) holds other images than SRe2L's seed-42 sampler "
                    f"draws, and SRe2L readers re-derive batches from that sampler. {to_lpld}"
                )
    for pos, (e, b) in enumerate(tqdm(store.keys, desc="export sre2l", unit="batch", disable=not progress)):
        folder = out / f"epoch_{int(e)}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(store_record(store, pos, exact_lams), os.fspath(folder / f"batch_{int(b)}.tar"))
    return store.num_entries
