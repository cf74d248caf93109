"""LPLD: ``<dir>/epoch_<e>/batch_<b>.tar`` plus ``sampler_indices_epoch.json``.

Records are SRe2L's six items (``docs/reference/peer-formats.md`` §3). The sidecar maps each epoch to
the image ids of its saved batches in load order, concatenated; batch ``b`` is the ``b``-th
consecutive chunk of the batch size. Pruned runs (``--prune_ratio r``) drop the short last batch
and keep only the first ``int(epochs * bpe * (1 - r))`` global batches, so the last epoch folder
may be partial; pass the original epoch count (``--epochs``) to record the pruning ratio.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lpldstore.errors import InteropError
from lpldstore.format.plan import LastBatch
from lpldstore.interop._common import (
    BatchRef,
    ImportOptions,
    PeerSource,
    prefix_plan,
    replay_sampler,
    sre2l_record,
)
from lpldstore.interop._images import ImageSet
from lpldstore.interop.sre2l import (
    _check_problems,
    check_six_items,
    epoch_batch_files,
    first_record,
    reader,
    source_of,
    store_record,
)
from lpldstore.storage.reader import LabelStore

__all__ = ["SIDECAR", "export", "scan"]

SIDECAR = "sampler_indices_epoch.json"


def _read_sidecar(path: Path) -> dict[str, list[int]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InteropError(f"{path}: expected LPLD's sampler JSON. Got an unreadable file ({exc}).") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(i, int) for i in v) for v in data.values()
    ):
        raise InteropError(f'{path}: expected {{"<epoch>": [image ids]}}. Got another structure.')
    return data


def scan(src: Path, images: ImageSet, options: ImportOptions) -> PeerSource:
    files = epoch_batch_files(src)
    items, batch_size = first_record(files)
    check_six_items(items, files[min(files)], "lpld")
    n_images = len(images)
    sidecar = src / SIDECAR
    notes: dict[str, Any] = {}
    problems: list[str] = []
    if sidecar.is_file():
        ids_by_epoch = _read_sidecar(sidecar)
        full_epoch = len(ids_by_epoch.get("0", []))
        # Pruned runs drop the short last batch; full ones keep it (as SRe2L does).
        last_batch: LastBatch = "drop" if n_images % batch_size and full_epoch < n_images else "pad"
        notes["composition"] = SIDECAR
    else:
        ids_by_epoch = None
        last_batch = "pad"
        notes["composition"] = f"no {SIDECAR}: replayed the seed-42 sampler, as LPLD's EpochBatchSampler does"
    plan, gaps = prefix_plan(
        num_images=n_images,
        batch_size=batch_size,
        last_batch=last_batch,
        present=list(files),
        epochs=options.epochs,
        where=str(src),
    )
    problems += gaps
    _check_problems(problems)
    if ids_by_epoch is None:
        replay = list(replay_sampler(n_images, batch_size, plan.epochs))
    refs = []
    for e, b in sorted(files):
        n = plan.batch_length(b)
        if ids_by_epoch is None:
            ids = replay[e][b]
        else:
            ids = ids_by_epoch.get(str(e), [])[b * batch_size : b * batch_size + n]
            if len(ids) != n:
                problems.append(
                    f"{sidecar}: epoch {e} lists no {n} ids for batch {b} (short or missing list)"
                )
                continue
            if min(ids) < 0 or max(ids) >= n_images:
                problems.append(f"{sidecar}: epoch {e} batch {b} names image ids outside [0, {n_images})")
                continue
        path = files[e, b]
        refs.append(
            BatchRef(
                e,
                b,
                str(path),
                reader(path, functools.partial(sre2l_record, n=len(ids), hw=images.hw, indices=ids)),
            )
        )
    _check_problems(problems)
    return source_of("lpld", plan, items, options, refs, teacher="unknown (LPLD import)", notes=notes)


def export(store: LabelStore, out: Path, exact_lams: dict[int, float], *, progress: bool = False) -> int:
    """Write LPLD's files and ``sampler_indices_epoch.json`` for the store's kept prefix."""
    plan = store.plan
    meta = store.metadata()
    if not meta.committed.all():
        raise InteropError(
            f"{store.where}: expected a complete store. Got {int((~meta.committed).sum())} uncommitted entries."
        )
    if plan.strategy == "random":
        raise InteropError(
            f"{store.where}: LPLD readers expect the first entries of the label stream (a prefix); this store "
            "keeps a random sample. Re-prune it with strategy 'prefix' or 'epoch' first."
        )
    ids_by_epoch: dict[str, list[int]] = {}
    for pos, (e, b) in enumerate(tqdm(store.keys, desc="export lpld", unit="batch", disable=not progress)):
        n = plan.batch_length(int(b))
        ids_by_epoch.setdefault(str(int(e)), []).extend(int(i) for i in meta.indices[pos, :n])
        folder = out / f"epoch_{int(e)}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(store_record(store, pos, exact_lams), os.fspath(folder / f"batch_{int(b)}.tar"))
    (out / SIDECAR).write_text(json.dumps(ids_by_epoch))
    return store.num_entries
