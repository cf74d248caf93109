"""LPQLD: flat ``<dir>/batch_<g>.tar`` (g counts batches across epochs) + ``sampler_indices_batch.json``.

Records (``docs/reference/peer-formats.md`` §4): ``[coords fp16, flip, mix_index uint8, mix_lam,
mix_bbox (4 uint8 tensors), logits fp16]``, or with ``--label_quantization`` the tail
``topk_values, topk_ids`` (7 items). Top-k records are expanded to dense logits by the rule of
:func:`~lpldstore.interop._common.topk_to_logits` (``mr`` by default). The sidecar maps each global
batch to its image ids. RandAugment records (float parameters at position 2) and the IN-21K
cutout records (a float array in place of the flips) are reported, not converted; so is MRS,
whose per-sample minimum the writer never saves.
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from lpldstore.errors import InteropError
from lpldstore.format.plan import LastBatch
from lpldstore.interop._common import (
    BatchRef,
    ImportOptions,
    PeerBatch,
    PeerSource,
    RecordProblem,
    as_numpy,
    flips_of,
    logits_of,
    mix_of,
    pixel_crops,
    prefix_plan,
    relabel_for,
    topk_to_logits,
)
from lpldstore.interop._images import ImageSet
from lpldstore.interop._safe_load import safe_torch_load
from lpldstore.interop.sre2l import _check_problems, reader

__all__ = ["SIDECAR", "scan"]

SIDECAR = "sampler_indices_batch.json"
_BATCH = re.compile(r"batch_(\d+)\.tar")


def _parse(
    items: Any, ids: list[int], hw: tuple[int, int], num_classes: int, options: ImportOptions
) -> PeerBatch:
    n = len(ids)
    if not isinstance(items, list | tuple) or len(items) not in (6, 7):
        got = f"{len(items)} items" if isinstance(items, list | tuple) else type(items).__name__
        raise RecordProblem(f"expected LPQLD's 6 or 7 items, got {got} (unknown record layout)")
    if len(items) == 7 and as_numpy(items[2], "item 2").dtype.kind == "f":
        raise RecordProblem(
            "RandAugment parameters at item 2; the lpldstore format does not hold RandAugment"
        )
    flips_arr = as_numpy(items[1], "flip")
    if flips_arr.shape[:1] != (n,):
        raise RecordProblem(
            f"short batch: {flips_arr.shape[0] if flips_arr.ndim else 0} images, expected {n}"
        )
    perm, lam, box = mix_of(items[2], items[3], items[4], n)
    if len(items) == 7:
        values, top_ids = as_numpy(items[5], "topk_values"), as_numpy(items[6], "topk_ids")
        if values.ndim != 2 or values.shape[0] != n:
            raise RecordProblem(f"expected top-k values of shape ({n}, k), got {values.shape}")
        logits = topk_to_logits(values, top_ids, num_classes, options.topk_rule, options.temperature or 1.0)
    else:
        logits = logits_of(items[5], n, num_classes)
    return PeerBatch(
        indices=np.asarray(ids, dtype=np.int64),
        crops=pixel_crops(items[0], hw, n),
        flips=flips_of(items[1], n),
        logits=logits,
        mix_index=perm,
        mix_lam=lam,
        mix_box=box,
    )


def scan(src: Path, images: ImageSet, options: ImportOptions) -> PeerSource:
    if not src.is_dir():
        raise InteropError(f"Expected an LPQLD label directory at {src}. Got no such directory.")
    sidecar = src / SIDECAR
    if not sidecar.is_file():
        raise InteropError(f"Expected {SIDECAR} in {src} (LPQLD's batch composition). Got none.")
    try:
        by_batch = {int(k): v for k, v in json.loads(sidecar.read_text()).items()}
    except (OSError, ValueError, AttributeError, RecursionError) as exc:
        raise InteropError(
            f'{sidecar}: expected {{"<global batch>": [image ids]}} ({type(exc).__name__}).'
        ) from None
    files = {int(m.group(1)): f for f in src.iterdir() if (m := _BATCH.fullmatch(f.name))}
    if not files:
        raise InteropError(f"Expected batch_<g>.tar files in {src}. Got none.")
    n_images = len(images)
    batch_size = len(by_batch.get(0, []))
    if batch_size == 0:
        raise InteropError(f"{sidecar}: expected the ids of global batch 0. Got none.")
    short = any(len(v) < batch_size for v in by_batch.values())
    # drop_last is on exactly when pruning; a short batch in the sidecar means it was off.
    last_batch: LastBatch = "pad" if short or n_images % batch_size == 0 else "drop"
    bpe = math.ceil(n_images / batch_size) if last_batch == "pad" else n_images // batch_size
    first = safe_torch_load(files[min(files)])
    if not isinstance(first, list | tuple) or len(first) not in (6, 7):
        raise InteropError(f"{files[min(files)]}: expected LPQLD's 6 or 7 items (unknown record layout).")
    num_classes = _num_classes(first, options)
    plan, problems = prefix_plan(
        num_images=n_images,
        batch_size=batch_size,
        last_batch=last_batch,
        present=[divmod(g, bpe) for g in files],
        epochs=options.epochs,
        where=str(src),
    )
    refs = []
    for g in sorted(files):
        e, b = divmod(g, bpe)
        ids = by_batch.get(g)
        n = plan.batch_length(b) if b < bpe else -1
        if (
            not isinstance(ids, list)
            or not all(isinstance(i, int) for i in ids)
            or len(ids) != n
            or min(ids) < 0
            or max(ids) >= n_images
        ):
            problems.append(f"{sidecar}: global batch {g} has no list of {n} image ids in [0, {n_images})")
            continue
        refs.append(
            BatchRef(
                e,
                b,
                str(files[g]),
                reader(
                    files[g],
                    functools.partial(
                        _parse, ids=ids, hw=images.hw, num_classes=num_classes, options=options
                    ),
                ),
            )
        )
    _check_problems(problems)
    return PeerSource(
        layout="lpqld",
        plan=plan,
        relabel=relabel_for(
            options, mix=first[2] is not None, teacher="unknown (LPQLD import)", crop_scale=(0.08, 1.0)
        ),
        num_classes=num_classes,
        refs=refs,
        notes={"composition": SIDECAR, "topk_rule": options.topk_rule if len(first) == 7 else None},
    )


def _num_classes(first: Any, options: ImportOptions) -> int:
    if len(first) == 6:
        return int(as_numpy(first[5], "logits").shape[-1])
    # Top-k files do not say how many classes there are.
    if options.num_classes is None:
        raise InteropError("LPQLD top-k files do not record the number of classes: pass --num-classes.")
    return options.num_classes
