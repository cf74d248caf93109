"""Checking a whole store: every chunk read and checksummed, every record checked for sense.

The arrays checked, and what a missing chunk of each means, come from the declaration
(``lpldstore.format.arrays``); an entry's record is checked by ``lpldstore.format.entries``, the
same checks the reader runs, plus the plan's batch composition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from lpldstore.errors import LpldStoreError
from lpldstore.format.codecs import Codec
from lpldstore.format.entries import record_problems
from lpldstore.format.schema import images_digest
from lpldstore.storage._guard import READ_ERRORS, missing_block_chunks, stale_array_metadata
from lpldstore.storage._open import StoreLike, is_url
from lpldstore.storage.reader import LabelStore, open_store
from lpldstore.tools.pack import check_zip_checksum

__all__ = ["Problem", "VerifyReport", "verify_store"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a store; ``epoch``/``batch`` are None for store-wide problems."""

    array: str
    message: str
    epoch: int | None = None
    batch: int | None = None

    def __str__(self) -> str:
        at = f"entry (epoch={self.epoch}, batch={self.batch}) " if self.epoch is not None else ""
        return f"{at}{self.array}: {self.message}"


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    source: str
    entries: int
    committed: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ok": self.ok,
            "entries": self.entries,
            "committed": self.committed,
            "problems": [dataclasses.asdict(p) for p in self.problems],
        }


def verify_store(
    source: StoreLike, *, storage_options: Mapping[str, Any] | None = None, progress: bool = False
) -> VerifyReport:
    """Read every chunk of a store and check it; never raises for damage, reports it.

    ``progress`` shows a bar (entries, then images) on stderr.
    """
    try:
        store = open_store(source, storage_options=storage_options)
    except LpldStoreError as exc:
        return VerifyReport(str(source), 0, 0, (Problem("store", str(exc)),))
    with store:
        problems: list[Problem] = []
        _check_zip(source, problems)
        problems.extend(
            Problem(a, m) for a, m in stale_array_metadata(store.zarr_store, store.where, store.attrs.arrays)
        )
        committed = _check_pool(store, problems, progress)
        _check_images(store, problems, progress)
        return VerifyReport(store.where, store.num_entries, int(committed.sum()), tuple(problems))


def _read(store: LabelStore, path: str, span: slice, problems: list[Problem]) -> npt.NDArray[Any] | None:
    try:
        return np.asarray(store.array(path)[span])
    except READ_ERRORS as exc:
        keys = store.keys[span]
        problems.extend(Problem(path, f"unreadable chunk ({exc})", int(e), int(b)) for e, b in keys)
        return None


def _check_pool(store: LabelStore, problems: list[Problem], progress: bool = False) -> npt.NDArray[np.bool_]:
    block = store.layout.block_entries
    codec = store.attrs.logits_codec
    # Every block-chunked array but the flags and keys (checked on their own): the record and,
    # from format version 2, the writer's fidelity sums.
    per_block = [
        a
        for a in store.attrs.arrays.values()
        if a.decl.chunking == "block" and a.decl.role not in ("committed", "key")
    ]
    committed = np.zeros(store.num_entries, dtype=bool)
    bar = tqdm(total=store.num_entries, desc="verify entries", unit="entry", disable=not progress)
    for start in range(0, store.num_entries, block):
        span = slice(start, min(start + block, store.num_entries))
        bar.update(span.stop - span.start)
        keys = store.keys[span]
        flags = _read(store, "pool/committed", span, problems)
        if flags is None:
            continue
        committed[span] = flags
        stored_keys = _read(store, "pool/key", span, problems)
        if stored_keys is not None:
            for (e, b), got in zip(keys, stored_keys, strict=True):
                if tuple(got) != (e, b):
                    problems.append(
                        Problem("pool/key", f"stored key {tuple(got.tolist())} != planned", int(e), int(b))
                    )
        rows = {a.name: _read(store, a.path, span, problems) for a in per_block}
        if flags.any():  # a committed entry's chunks were all written: absent means lost
            for array in per_block:
                if missing_block_chunks(store.array(array.path), start // block):
                    problems.extend(
                        Problem(array.path, "chunk missing (reads as fill value)", int(e), int(b))
                        for (e, b), done in zip(keys, flags, strict=True)
                        if done
                    )
                    rows[array.name] = None
        for i, (e, b) in enumerate(keys):
            epoch, batch = int(e), int(b)
            if not flags[i]:
                problems.append(
                    Problem("pool/committed", "entry not committed (unfinished store)", epoch, batch)
                )
                continue
            row = {name: (None if v is None else v[i]) for name, v in rows.items() if name != "fidelity"}
            for path, message in record_problems(store.attrs, epoch, batch, row):
                problems.append(Problem(path, message, epoch, batch))
            _check_logits(store, codec, start + i, epoch, batch, problems)
    bar.close()
    return committed


def _check_logits(
    store: LabelStore, codec: Codec, pos: int, epoch: int, batch: int, problems: list[Problem]
) -> None:
    n = store.plan.batch_length(batch)
    try:
        raw = np.asarray(store.array("pool/logits")[pos])
        logits = codec.decode(raw)
    except READ_ERRORS as exc:
        problems.append(Problem("pool/logits", f"unreadable chunk ({exc})", epoch, batch))
        return
    # Encoded codecs fill a missing chunk with 0xFF bytes, float16 with NaN.
    missing = (raw[:n] == 255).all() if raw.dtype == np.uint8 else np.isnan(raw[:n]).all()
    if missing:
        problems.append(Problem("pool/logits", "chunk missing (reads as fill value)", epoch, batch))
    elif not np.isfinite(logits[:n]).all():
        problems.append(Problem("pool/logits", "non-finite logits", epoch, batch))


def _check_images(store: LabelStore, problems: list[Problem], progress: bool = False) -> None:
    pixels_array = store.array("images/pixels")
    step = pixels_array.chunks[0]
    ok = True
    starts = range(0, store.dataset.num_images, step)
    for start in tqdm(starts, desc="verify images", unit="chunk", disable=not progress):
        try:
            pixels_array[start : start + step]
        except READ_ERRORS as exc:
            problems.append(
                Problem("images/pixels", f"unreadable chunk of images {start}..{start + step - 1} ({exc})")
            )
            ok = False
    try:
        labels = store.labels()
    except LpldStoreError as exc:
        problems.append(Problem("images/labels", str(exc)))
        return
    if labels.size and (labels.min() < 0 or labels.max() >= store.dataset.num_classes):
        problems.append(Problem("images/labels", f"labels outside [0, {store.dataset.num_classes})"))
    try:
        pixels = store.images() if ok else None
    except LpldStoreError as exc:  # a missing chunk: reads as zeros, so the reader refuses it
        problems.append(Problem("images/pixels", str(exc)))
        return
    if pixels is not None and images_digest(pixels, labels) != store.dataset.images_sha256:
        problems.append(Problem("images", "SHA-256 of images and labels differs from dataset.images_sha256"))


def _check_zip(source: StoreLike, problems: list[Problem]) -> None:
    # A packed store is checked against the SHA-256 that `lpldstore pack` wrote beside it.
    if not is_url(source) and Path(source).suffix == ".zip" and Path(source).is_file():
        problem = check_zip_checksum(source)
        if problem:
            problems.append(Problem("zip", problem))
