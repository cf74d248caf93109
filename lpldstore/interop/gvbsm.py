"""G-VBSM (and EDC's 7-item files): ``<dir>/epoch_<e>/batch_<b>.tar``, the ids inside each record.

``[coords, flip, mix_index, mix_lam, mix_bbox, logits, index]`` (``docs/reference/peer-formats.md``
§5): the logits are a teacher ensemble, item 6 is the batch's dataset ids, so the composition is
read, not replayed. EDC's 8th item (patch-shuffle permutation) has no place in the lpldstore format
and is reported as an unknown item.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from lpldstore.errors import InteropError
from lpldstore.interop._common import (
    BatchRef,
    ImportOptions,
    PeerBatch,
    PeerSource,
    RecordProblem,
    as_numpy,
    sre2l_record,
)
from lpldstore.interop._images import ImageSet
from lpldstore.interop.sre2l import reader, scan_batch_files, source_of

__all__ = ["scan"]


def _parse(items: Any, n: int, hw: tuple[int, int], num_images: int) -> PeerBatch:
    if not isinstance(items, list | tuple) or len(items) != 7:
        got = f"{len(items)} items" if isinstance(items, list | tuple) else type(items).__name__
        raise RecordProblem(f"expected G-VBSM's 7 items, got {got} (unknown record layout)")
    ids = as_numpy(items[6], "index").astype(np.int64).reshape(-1)
    if ids.shape != (n,):
        raise RecordProblem(f"short batch: {ids.shape[0]} ids, expected {n}")
    if (ids < 0).any() or (ids >= num_images).any():
        raise RecordProblem(f"image ids outside [0, {num_images})")
    return sre2l_record(list(items[:6]), n=n, hw=hw, indices=ids.tolist())


def scan(src: Path, images: ImageSet, options: ImportOptions) -> PeerSource:
    files, items, plan = scan_batch_files(src, images, options)
    if isinstance(items, list | tuple) and len(items) == 6:
        raise InteropError(
            f"{files[min(files)]}: expected G-VBSM's 7-item records (the 7th the batch's dataset ids). Got 6 items: "
            "the SRe2L layout, whose batches are replayed from the seed-42 sampler. Import it with --from sre2l "
            "(or --from lpld with LPLD's sampler file)."
        )
    n_images = len(images)
    refs = [
        BatchRef(
            e,
            b,
            str(files[e, b]),
            reader(
                files[e, b],
                functools.partial(_parse, n=plan.batch_length(b), hw=images.hw, num_images=n_images),
            ),
        )
        for e, b in sorted(files)
    ]
    return source_of(
        "gvbsm",
        plan,
        items,
        options,
        refs,
        teacher="unknown (G-VBSM ensemble)",
        notes={"composition": "ids stored in each record (item 6)"},
    )
