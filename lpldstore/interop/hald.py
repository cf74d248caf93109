"""HALD: ``<dir>/epoch_<e>.tar`` (a list over the epoch's batches) + ``sampler_indices_dict.pt``.

Each batch record is ``[coords fp16, flip, mix_index, mix_lam, mix_bbox, probs fp16]`` with
``probs = softmax(ensemble logits / T)`` (``docs/reference/peer-formats.md`` §6); the sidecar holds
each epoch's permutation ``{"<e>": randperm(N)}``, cut into consecutive batches. Probabilities
are stored as logits T·log(p) (T = ``--temperature``, HALD's default 20), so that
``softmax(logits / T)`` gives back HALD's targets; zero probabilities become the fill logit.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpldstore.errors import InteropError
from lpldstore.format.plan import LastBatch
from lpldstore.interop._common import (
    BatchRef,
    ImportOptions,
    PeerBatch,
    PeerSource,
    RecordProblem,
    logits_of,
    num_classes_of,
    prefix_plan,
    probs_to_logits,
    record_length,
    relabel_for,
    sre2l_record,
)
from lpldstore.interop._images import ImageSet
from lpldstore.interop._safe_load import safe_torch_load
from lpldstore.interop.sre2l import _check_problems

__all__ = ["DEFAULT_TEMPERATURE", "SIDECAR", "scan"]

SIDECAR = "sampler_indices_dict.pt"
DEFAULT_TEMPERATURE = 20.0
_EPOCH = re.compile(r"epoch_(\d+)\.tar")


class _EpochFile:
    """One epoch file, loaded once and shared by the readers of its batches (HALD keeps whole epochs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: list[Any] | None = None

    def record(self, b: int) -> Any:
        if self._records is None:
            records = safe_torch_load(self.path)
            if not isinstance(records, list):
                raise RecordProblem(f"expected a list of batch records, got {type(records).__name__}")
            self._records = records
        if b >= len(self._records):
            raise RecordProblem(f"batch {b} missing from the epoch file ({len(self._records)} batches)")
        record = self._records[b]
        if b == len(self._records) - 1:
            self._records = None  # batches are read in order: free the epoch after its last one
        return record


def _parse(items: Any, ids: list[int], hw: tuple[int, int], temperature: float) -> PeerBatch:
    batch = sre2l_record(items, n=len(ids), hw=hw, indices=ids)
    probs = logits_of(items[5], len(ids)).astype(np.float64)
    if (probs < 0).any() or (probs > 1).any():
        raise RecordProblem("expected probabilities in [0, 1] (HALD stores softmax outputs)")
    return PeerBatch(
        indices=batch.indices,
        crops=batch.crops,
        flips=batch.flips,
        logits=probs_to_logits(probs, temperature),
        mix_index=batch.mix_index,
        mix_lam=batch.mix_lam,
        mix_box=batch.mix_box,
    )


def _read(file: _EpochFile, b: int, ids: list[int], hw: tuple[int, int], temperature: float) -> PeerBatch:
    return _parse(file.record(b), ids, hw, temperature)


def scan(src: Path, images: ImageSet, options: ImportOptions) -> PeerSource:
    if not src.is_dir():
        raise InteropError(f"Expected a HALD label directory at {src}. Got no such directory.")
    sidecar = src / SIDECAR
    if not sidecar.is_file():
        raise InteropError(f"Expected {SIDECAR} in {src} (HALD's per-epoch permutations). Got none.")
    perms = safe_torch_load(sidecar)
    if not isinstance(perms, dict):
        raise InteropError(
            f"{sidecar}: expected a dict of per-epoch permutations. Got {type(perms).__name__}."
        )
    epoch_files = {int(m.group(1)): _EpochFile(f) for f in src.iterdir() if (m := _EPOCH.fullmatch(f.name))}
    if not epoch_files:
        raise InteropError(f"Expected epoch_<e>.tar files in {src}. Got none.")
    first_epoch = safe_torch_load(epoch_files[min(epoch_files)].path)
    if not isinstance(first_epoch, list) or not first_epoch:
        raise InteropError(
            f"{epoch_files[min(epoch_files)].path}: expected a non-empty list of batch records."
        )
    n_images = len(images)
    try:
        batch_size = record_length(first_epoch[0])
    except RecordProblem as exc:
        raise InteropError(f"{epoch_files[min(epoch_files)].path}: {exc}") from exc
    per_epoch = len(first_epoch)
    last_batch: LastBatch = "pad" if per_epoch * batch_size > n_images else "drop"
    present = [(e, b) for e in epoch_files for b in range(per_epoch)]
    plan, problems = prefix_plan(
        num_images=n_images,
        batch_size=batch_size,
        last_batch=last_batch,
        present=present,
        epochs=options.epochs,
        where=str(src),
    )
    temperature = options.temperature if options.temperature is not None else DEFAULT_TEMPERATURE
    refs = []
    for e in sorted(epoch_files):
        perm = perms.get(str(e), perms.get(e))
        if not isinstance(perm, torch.Tensor) or sorted(perm.tolist()) != list(range(n_images)):
            problems.append(f"{sidecar}: no permutation of {n_images} images for epoch {e}")
            continue
        order = perm.tolist()
        for b in range(plan.batches_per_epoch):
            ids = order[b * batch_size : b * batch_size + plan.batch_length(b)]
            file = epoch_files[e]
            refs.append(
                BatchRef(
                    e,
                    b,
                    f"{file.path} batch {b}",
                    functools.partial(_read, file, b, ids, images.hw, temperature),
                )
            )
    _check_problems(problems)
    return PeerSource(
        layout="hald",
        plan=plan,
        relabel=relabel_for(
            options,
            mix=first_epoch[0][2] is not None,
            teacher="unknown (HALD ensemble)",
            crop_scale=(0.08, 1.0),
        ),
        num_classes=num_classes_of(first_epoch[0], str(epoch_files[min(epoch_files)].path)),
        refs=refs,
        notes={"composition": SIDECAR, "logits": f"{temperature:g} * log(stored probabilities)"},
    )
