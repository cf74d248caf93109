"""FKD / FerKD: one file per image, ``<dir>/<class folder>/<image stem>.tar``.

Each file is ``torch.save([coords, flip_status, labels])`` of NumPy arrays
(``docs/reference/peer-formats.md`` §7): ``coords`` (R, 4) normalized boxes, ``flip_status`` (R,), ``labels``
(R, 2, k) with class ids in row 0 and top-k probabilities in row 1, for R crops of the image.
FKD has no batches and no CutMix; a store needs them, so crop ``r`` of the images
``b·B .. b·B + B - 1`` (ImageFolder order) becomes entry (epoch ``r``, batch ``b``). The top-k
probabilities are expanded by FKD's ``Recover_soft_label`` rule (``--fkd-rule``) and stored as
logits T·log(p) with T = ``--temperature`` (default 1: FKD trains on the probabilities).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lpldstore.errors import InteropError
from lpldstore.format.plan import PruningPlan
from lpldstore.interop._common import (
    PEER_SEED,
    BatchRef,
    ImportOptions,
    PeerBatch,
    PeerSource,
    RecordProblem,
    as_numpy,
    flips_of,
    pixel_crops,
    probs_to_logits,
    relabel_for,
)
from lpldstore.interop._images import ImageSet
from lpldstore.interop._safe_load import safe_torch_load
from lpldstore.interop.layouts import FKD_RULES
from lpldstore.interop.sre2l import _check_problems

__all__ = ["recover_soft_label", "scan"]

_DEFAULT_BATCH = 256


def recover_soft_label(labels: npt.NDArray[Any], num_classes: int, rule: str) -> npt.NDArray[np.float64]:
    """FKD's ``Recover_soft_label``: (R, 2, k) ids/probabilities -> (R, C) probabilities."""
    ids = np.asarray(labels[:, 0, :]).astype(np.int64)
    probs = np.asarray(labels[:, 1, :]).astype(np.float64)
    r, k = ids.shape
    if (ids < 0).any() or (ids >= num_classes).any():
        raise RecordProblem(f"class ids outside [0, {num_classes})")
    rows = np.arange(r)[:, None]
    out = np.zeros((r, num_classes), dtype=np.float64)
    if rule == "hard":
        out[np.arange(r), ids[:, 0]] = 1.0
        return out
    if rule == "smoothing":
        ids, probs, k = ids[:, :1], probs[:, :1], 1
    if rule in ("marginal_smoothing", "smoothing"):
        rest = (1.0 - probs.sum(axis=1, keepdims=True)) / (num_classes - k)
        out[:] = rest
        out[rows[:, :1] if k == 1 else rows, ids] = probs
        return out
    out[rows, ids] = probs
    return out / out.sum(axis=1, keepdims=True)


class _Group:
    """The per-image files of one batch of images, loaded once for all of their crops."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._items: list[Any] | None = None

    def items(self) -> list[Any]:
        if self._items is None:
            self._items = [safe_torch_load(p) for p in self.paths]
        return self._items

    def release(self) -> None:
        self._items = None


def _parse(
    group: _Group,
    crop: int,
    ids: list[int],
    hw: tuple[int, int],
    num_classes: int,
    rule: str,
    temperature: float,
    last: bool,
) -> PeerBatch:
    rows_coords, rows_flip, rows_labels = [], [], []
    for path, items in zip(group.paths, group.items(), strict=True):
        if not isinstance(items, list | tuple) or len(items) != 3:
            raise RecordProblem(
                f"{path}: expected FKD's 3 items [coords, flip_status, labels] (unknown record layout)"
            )
        coords, flips, labels = (
            as_numpy(v, name) for v, name in zip(items, ("coords", "flip_status", "labels"), strict=True)
        )
        if labels.ndim != 3 or labels.shape[1] != 2 or crop >= min(len(coords), len(flips), len(labels)):
            raise RecordProblem(f"{path}: expected at least {crop + 1} crops with labels of shape (R, 2, k)")
        rows_coords.append(coords[crop])
        rows_flip.append(flips[crop])
        rows_labels.append(labels[crop])
    if last:
        group.release()
    n = len(ids)
    probs = recover_soft_label(np.stack(rows_labels), num_classes, rule)
    return PeerBatch(
        indices=np.asarray(ids, dtype=np.int64),
        crops=pixel_crops(np.stack(rows_coords), hw, n),
        flips=flips_of(np.asarray(rows_flip), n),
        logits=probs_to_logits(probs, temperature),
    )


def scan(src: Path, images: ImageSet, options: ImportOptions) -> PeerSource:
    if not src.is_dir():
        raise InteropError(f"Expected an FKD label directory (<class>/<image>.tar) at {src}. Got none.")
    if options.fkd_rule not in FKD_RULES:
        raise InteropError(f"Expected --fkd-rule among {FKD_RULES}. Got {options.fkd_rule!r} instead.")
    if options.num_classes is None:
        raise InteropError(
            "FKD files store top-k ids only and do not say how many classes there are: pass --num-classes."
        )
    problems: list[str] = []
    paths = []
    for image in images.paths:
        label = src / image.parent.name / f"{image.stem}.tar"
        if not label.is_file():
            problems.append(f"missing label file {label} for image {image}")
        paths.append(label)
    _check_problems(problems)
    first = safe_torch_load(paths[0])
    if not isinstance(first, list | tuple) or len(first) != 3:
        raise InteropError(f"{paths[0]}: expected FKD's 3 items [coords, flip_status, labels].")
    crops = len(as_numpy(first[0], "coords"))
    n_images = len(images)
    batch_size = options.batch_size or min(n_images, _DEFAULT_BATCH)
    epochs = options.epochs or crops
    if epochs > crops:
        raise InteropError(f"--epochs {epochs} asks for more crops than the files hold ({crops}).")
    plan = PruningPlan(
        num_images=n_images,
        batch_size=batch_size,
        epochs=epochs,
        seed=PEER_SEED,
        last_batch="pad",
        composition="explicit",
    )
    temperature = options.temperature if options.temperature is not None else 1.0
    refs = []
    for b in range(plan.batches_per_epoch):
        ids = list(range(b * batch_size, b * batch_size + plan.batch_length(b)))
        group = _Group([paths[i] for i in ids])
        for e in range(epochs):
            read = functools.partial(
                _parse,
                group,
                e,
                ids,
                images.hw,
                options.num_classes,
                options.fkd_rule,
                temperature,
                e == epochs - 1,
            )
            refs.append(BatchRef(e, b, f"{src} crop {e} of images {ids[0]}..{ids[-1]}", read))
    return PeerSource(
        layout="fkd",
        plan=plan,
        relabel=relabel_for(options, mix=False, teacher="unknown (FKD import)", crop_scale=(0.08, 0.936)),
        num_classes=options.num_classes,
        refs=refs,
        notes={
            "composition": f"crop r of images in ImageFolder order, batches of {batch_size}",
            "logits": f"{temperature:g} * log({options.fkd_rule} probabilities)",
        },
    )
