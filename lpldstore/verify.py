"""Checking a whole store: every chunk read and checksummed, every record checked for sense."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from lpldstore._guard import READ_ERRORS, missing_block_chunks, stale_array_metadata
from lpldstore._schema import ENTRY_ARRAYS, fidelity_spec, images_digest
from lpldstore._storage import StoreLike
from lpldstore.codecs import Codec
from lpldstore.errors import LpldStoreError
from lpldstore.reader import LabelStore, open_store

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


def verify_store(source: StoreLike, *, storage_options: Mapping[str, Any] | None = None) -> VerifyReport:
    """Read every chunk of a store and check it; never raises for damage, reports it."""
    try:
        store = open_store(source, storage_options=storage_options)
    except LpldStoreError as exc:
        return VerifyReport(str(source), 0, 0, (Problem("store", str(exc)),))
    with store:
        problems: list[Problem] = []
        _check_zip(source, problems)
        problems.extend(Problem(a, m) for a, m in stale_array_metadata(store.zarr_store, store.where))
        committed = _check_pool(store, problems)
        _check_images(store, problems)
        return VerifyReport(store.where, store.num_entries, int(committed.sum()), tuple(problems))


def _read(store: LabelStore, path: str, span: slice, problems: list[Problem]) -> npt.NDArray[Any] | None:
    try:
        return np.asarray(store.array(path)[span])
    except READ_ERRORS as exc:
        keys = store.keys[span]
        problems.extend(Problem(path, f"unreadable chunk ({exc})", int(e), int(b)) for e, b in keys)
        return None


def _check_pool(store: LabelStore, problems: list[Problem]) -> npt.NDArray[np.bool_]:
    block = store.layout.block_entries
    codec = store.attrs.codec.codec(store.dataset.num_classes)  # built once, not per entry
    committed = np.zeros(store.num_entries, dtype=bool)
    for start in range(0, store.num_entries, block):
        span = slice(start, min(start + block, store.num_entries))
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
        rows = {name: _read(store, f"pool/{name}", span, problems) for name in ENTRY_ARRAYS}
        # The writer's fidelity sums (format version 2) are checked like the entry arrays, but
        # are not part of an entry, so a damaged block of them is named but not re-checked per row.
        measured = ("fidelity",) if fidelity_spec(store.attrs) is not None else ()
        for name in measured:
            _read(store, f"pool/{name}", span, problems)
        if flags.any():  # a committed entry's chunks were all written: absent means lost
            for name in (*ENTRY_ARRAYS, *measured):
                if missing_block_chunks(store.array(f"pool/{name}"), start // block):
                    problems.extend(
                        Problem(f"pool/{name}", "chunk missing (reads as fill value)", int(e), int(b))
                        for (e, b), done in zip(keys, flags, strict=True)
                        if done
                    )
                    if name in rows:
                        rows[name] = None
        for i, (e, b) in enumerate(keys):
            epoch, batch = int(e), int(b)
            if not flags[i]:
                problems.append(
                    Problem("pool/committed", "entry not committed (unfinished store)", epoch, batch)
                )
                continue
            row = {name: (None if v is None else v[i]) for name, v in rows.items()}
            for message, array in _entry_problems(store, epoch, batch, row):
                problems.append(Problem(array, message, epoch, batch))
            _check_logits(store, codec, start + i, epoch, batch, problems)
    return committed


def _entry_problems(
    store: LabelStore, epoch: int, batch: int, row: dict[str, npt.NDArray[Any] | None]
) -> list[tuple[str, str]]:
    plan, dataset, relabel = store.plan, store.dataset, store.relabel
    n, (h, w) = plan.batch_length(batch), dataset.image_shape[:2]
    out_h, out_w = relabel.output_size
    found: list[tuple[str, str]] = []
    idx, crop, perm, lam, box = (row[k] for k in ("indices", "crop", "mix_index", "mix_lam", "mix_box"))
    if idx is not None:
        real, pad = idx[:n].astype(np.int64), idx[n:]
        if ((real < 0) | (real >= dataset.num_images)).any() or (pad != -1).any():
            found.append(
                (f"image indices out of range [0, {dataset.num_images}) or bad padding", "pool/indices")
            )
        elif plan.composition == "seeded" and not np.array_equal(real, plan.batch_indices(epoch, batch)):
            found.append(("batch composition differs from the plan", "pool/indices"))
    if crop is not None:
        top, left, ch, cw = crop[:n].astype(np.int64).T
        if ((top < 0) | (left < 0) | (ch < 1) | (cw < 1) | (top + ch > h) | (left + cw > w)).any():
            found.append((f"crop box outside the {h}x{w} image", "pool/crop"))
    if perm is not None and sorted(perm[:n].tolist()) != list(range(n)):
        found.append(("CutMix partner index is not a permutation of the batch", "pool/mix_index"))
    if lam is not None and not (np.isfinite(lam) and 0 <= lam <= 1):
        found.append((f"CutMix lambda {lam} outside [0, 1]", "pool/mix_lam"))
    if box is not None:
        t, l_, b, r = (int(v) for v in box)
        if not (0 <= t <= b <= out_h and 0 <= l_ <= r <= out_w):
            found.append((f"CutMix box {box.tolist()} outside the {out_h}x{out_w} output", "pool/mix_box"))
    return found


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


def _check_images(store: LabelStore, problems: list[Problem]) -> None:
    pixels_array = store.array("images/pixels")
    step = pixels_array.chunks[0]
    ok = True
    for start in range(0, store.dataset.num_images, step):
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
    from pathlib import Path

    from lpldstore._storage import is_url
    from lpldstore.pack import check_zip_checksum

    if not is_url(source) and Path(source).suffix == ".zip" and Path(source).is_file():
        problem = check_zip_checksum(source)
        if problem:
            problems.append(Problem("zip", problem))
