"""Bytes on disk per component of a store, and what the same labels take in the peers' layout.

The peer figure is exact, not estimated: the size of each distinct ``epoch_<e>/batch_<b>.tar``
that the SRe2L/LPLD relabel code writes with ``torch.save`` (``[coords, flip, mix_index, mix_lam,
mix_bbox, logits]``) is computed byte for byte by ``_torch_save_size`` without importing torch
(which would cost seconds), and LPLD's ``sampler_indices_epoch.json`` sidecar is sized digit by
digit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from zarr.core.sync import sync

from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import RelabelConfig
from lpldstore.storage.reader import LabelStore
from lpldstore.tools._torch_save_size import torch_save_size

__all__ = ["COMPONENTS", "peer_layout_bytes", "storage_bytes"]

# Component of the storage table -> arrays whose chunks it counts.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "images": ("images/pixels", "images/labels"),
    "batch_indices": ("pool/indices",),
    "crop_boxes": ("pool/crop",),
    "flips": ("pool/flip",),
    "cutmix_index": ("pool/mix_index",),
    "cutmix_lambda": ("pool/mix_lam",),
    "cutmix_box": ("pool/mix_box",),
    "logits": ("pool/logits",),
}


async def _sizes(store: Any) -> dict[str, int]:
    return {key: await store.getsize(key) async for key in store.list_prefix("")}


def storage_bytes(store: LabelStore) -> dict[str, int]:
    """Bytes on disk of each component; ``metadata`` is every zarr.json plus keys and commit flags."""
    owner = {array: component for component, arrays in COMPONENTS.items() for array in arrays}
    table = dict.fromkeys([*COMPONENTS, "metadata"], 0)
    for key, size in sync(_sizes(store.zarr_store)).items():
        array = key.split("/c/")[0] if "/c/" in key else None
        table[owner.get(array or "", "metadata")] += size
    table["total"] = sum(table.values())
    return table


def _file_sizes(shapes: Iterable[tuple[int, int]], classes: int, mix: bool) -> dict[tuple[int, int], int]:
    """Size of a ``batch_<b>.tar`` per (batch length, digits of b): all that changes its size."""
    return {
        (n, digits): torch_save_size(n, classes, mix, f"batch_{'1' * digits}") for n, digits in set(shapes)
    }


def _json_list_bytes(ids: npt.NDArray[np.int64]) -> int:
    if ids.size == 0:
        return 2
    digits = np.floor(np.log10(np.maximum(ids, 1))).astype(np.int64) + 1
    return 2 + int(digits.sum()) + 2 * (ids.size - 1)  # "[" "]" and ", " separators


def _sidecar_bytes(per_epoch: dict[int, npt.NDArray[np.int64]]) -> int:
    # json.dumps({"<e>": [ids...]}) with the default separators.
    if not per_epoch:
        return 2
    body = sum(len(f'"{e}": ') + _json_list_bytes(ids) for e, ids in per_epoch.items())
    return 2 + body + 2 * (len(per_epoch) - 1)


def peer_layout_bytes(
    plan: PruningPlan,
    relabel: RelabelConfig,
    num_classes: int,
    kept_indices: npt.NDArray[np.int64] | None = None,
) -> dict[str, int]:
    """Bytes of the same labels as SRe2L/LPLD per-batch ``torch.save`` files.

    Returns the files for the kept entries, the LPLD sidecar for them, and the files of the whole
    unpruned label stream of the same schedule. ``kept_indices`` (kept entries x batch, -1 padded)
    sizes the sidecar exactly for an explicit composition; seeded plans derive it.
    """
    mix = relabel.mix != "none"
    keys = plan.kept_keys
    all_batches = np.arange(plan.batches_per_epoch)
    lengths = np.array([plan.batch_length(int(b)) for b in all_batches])
    digits = np.array([len(str(int(b))) for b in all_batches])
    sizes = _file_sizes(zip(lengths.tolist(), digits.tolist(), strict=True), num_classes, mix)
    per_batch = np.array(
        [sizes[int(n), int(d)] for n, d in zip(lengths, digits, strict=True)], dtype=np.int64
    )
    kept_files = int(per_batch[keys[:, 1]].sum())
    unpruned_files = int(per_batch.sum()) * plan.epochs

    per_epoch: dict[int, npt.NDArray[np.int64]] = {}
    for epoch in np.unique(keys[:, 0]).tolist():
        rows = np.flatnonzero(keys[:, 0] == epoch)
        if kept_indices is not None:
            ids = kept_indices[rows].reshape(-1)
            per_epoch[epoch] = ids[ids >= 0]
        else:
            # One permutation per epoch (not per batch): its batches are consecutive slices of it.
            order = plan.epoch_permutation(epoch)
            per_epoch[epoch] = np.concatenate(
                [
                    order[b * plan.batch_size : b * plan.batch_size + plan.batch_length(int(b))]
                    for b in keys[rows, 1]
                ]
            )
    return {
        "files": kept_files,
        "lpld_sidecar": _sidecar_bytes(per_epoch),
        "total": kept_files + _sidecar_bytes(per_epoch),
        "unpruned_files": unpruned_files,
        "num_files": len(keys),
        "unpruned_num_files": plan.total_entries,
    }
