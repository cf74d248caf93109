"""Checking a whole store: every chunk read and checksummed, every record checked for sense.

The arrays checked, and what a missing chunk of each means, come from the declaration
(``lpldstore.format.arrays``); an entry's record is checked by ``lpldstore.format.entries``, the
same checks the reader runs, plus the plan's batch composition. From format version 3 every
entry's logits and arrays are checked against its digests (a chunk that is not this entry's
names the entry), and the report carries the store's fingerprint. A directory store is also
walked for anything that is not one of its own regular files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from lpldstore.errors import LpldStoreError, RecordsChangedError
from lpldstore.format.arrays import bound_fields
from lpldstore.format.codecs import Codec
from lpldstore.format.entries import entry_digest_problem, logits_digest_problem, record_problems
from lpldstore.format.schema import images_digest
from lpldstore.storage._guard import READ_ERRORS, missing_block_chunks, stale_array_metadata
from lpldstore.storage._lease import LEASE_DIR
from lpldstore.storage._open import StoreLike, is_url
from lpldstore.storage._safe import describe_error, store_path_of
from lpldstore.storage.reader import LabelStore, open_store
from lpldstore.tools.pack import check_zip_checksum

__all__ = ["MAX_PROBLEMS", "Problem", "VerifyReport", "verify_store"]

#: Problems listed one by one; beyond this they are counted (a forged store must not make
#: ``verify`` build millions of them).
MAX_PROBLEMS = 10_000
# Missing key chunks (written for every block when a store is created) after which the pool is
# not read entry by entry: the store is truncated or declares far more than it holds.
_MAX_MISSING_KEY_CHUNKS = 64


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
    """What ``verify`` found.

    ``bound``: the store carries digests (format version 3); ``binding`` says what that means
    for this store. ``fingerprint``: for a bound store without problems, the SHA-256 of its
    identity and every entry's digests, in order (publish it beside the store; two stores with
    the same fingerprint hold the same records and entries). ``unlisted``: problems beyond
    :data:`MAX_PROBLEMS`, counted only.
    """

    source: str
    entries: int
    committed: int
    problems: tuple[Problem, ...]
    bound: bool = False
    binding: str = ""
    fingerprint: str | None = None
    unlisted: int = 0

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
            "bound": self.bound,
            "binding": self.binding,
            "fingerprint": self.fingerprint,
            "problems_not_listed": self.unlisted,
        }


class _Problems(list[Problem]):
    """A list that keeps the first MAX_PROBLEMS problems and counts the rest."""

    unlisted = 0

    def append(self, problem: Problem) -> None:
        if len(self) < MAX_PROBLEMS:
            super().append(problem)
        else:
            self.unlisted += 1

    def extend(self, problems: Any) -> None:
        for p in problems:
            self.append(p)


def verify_store(
    source: StoreLike,
    *,
    storage_options: Mapping[str, Any] | None = None,
    require_bound: bool = False,
    progress: bool = False,
) -> VerifyReport:
    """Read every chunk of a store and check it; never raises for damage, reports it.

    ``require_bound``: a store without digests (format version 1 or 2) is a problem. ``progress``
    shows a bar (entries, then images) on stderr.
    """
    try:
        store = open_store(source, storage_options=storage_options, require_bound=require_bound)
    except RecordsChangedError as exc:
        # Name each record that changed (format version 3 digests every root record).
        changed = tuple(
            Problem(
                f"root/{name}",
                "changed after the store was written: its digest in the integrity record differs",
            )
            for name in exc.changed
        )
        return VerifyReport(str(source), 0, 0, (Problem("store", str(exc)), *changed), bound=True)
    except LpldStoreError as exc:
        return VerifyReport(str(source), 0, 0, (Problem("store", str(exc)),))
    with store:
        problems = _Problems()
        _check_zip(source, problems)
        _check_files(store, problems)
        problems.extend(
            Problem(a, m) for a, m in stale_array_metadata(store.zarr_store, store.where, store.attrs.arrays)
        )
        committed, digests = _check_pool(store, problems, progress)
        _check_images(store, problems, progress)
        fingerprint = None
        if store.bound and not problems and digests is not None:
            h = hashlib.sha256(b"lpldstore/fingerprint/v3\0" + store.attrs.identity)
            h.update(np.ascontiguousarray(digests).tobytes())
            fingerprint = h.hexdigest()
        return VerifyReport(
            store.where,
            store.num_entries,
            int(committed.sum()),
            tuple(problems),
            bound=store.bound,
            binding=store.binding,
            fingerprint=fingerprint,
            unlisted=problems.unlisted,
        )


def _read(store: LabelStore, path: str, span: slice, problems: list[Problem]) -> npt.NDArray[Any] | None:
    try:
        return np.asarray(store.array(path)[span])
    except READ_ERRORS as exc:
        keys = store.keys[span]
        problems.extend(
            Problem(path, f"unreadable chunk ({describe_error(exc)})", int(e), int(b)) for e, b in keys
        )
        return None


def _missing_key_blocks(store: LabelStore, problems: list[Problem]) -> set[int]:
    """Blocks without their key chunk (written at creation): reported per block, not per entry."""
    array = store.array("pool/key")
    missing: set[int] = set()
    for number in range(array.cdata_shape[0]):
        if missing_block_chunks(array, number):
            missing.add(number)
            if len(missing) > _MAX_MISSING_KEY_CHUNKS:
                problems.append(
                    Problem(
                        "pool/key",
                        f"more than {_MAX_MISSING_KEY_CHUNKS} of {array.cdata_shape[0]} key chunks are missing: the "
                        "store is truncated or its metadata declares far more entries than it holds; the pool was "
                        "not read entry by entry",
                    )
                )
                return set(range(array.cdata_shape[0]))
    for number in sorted(missing):
        problems.append(
            Problem("pool/key", f"chunk of block {number} missing (written when the store was created)")
        )
    return missing


def _check_pool(
    store: LabelStore, problems: list[Problem], progress: bool = False
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8] | None]:
    block = store.layout.block_entries
    codec = store.attrs.logits_codec
    # Every block-chunked array but the flags and keys (checked on their own): the record, from
    # format version 2 the writer's fidelity sums, from version 3 the digests.
    per_block = [
        a
        for a in store.attrs.arrays.values()
        if a.decl.chunking == "block" and a.decl.role not in ("committed", "key")
    ]
    bound = store.bound
    bound_names = bound_fields(store.attrs)
    committed = np.zeros(store.num_entries, dtype=bool)
    all_digests = np.zeros((store.num_entries, 2, 32), dtype=np.uint8) if bound else None
    skip = _missing_key_blocks(store, problems)
    bar = tqdm(total=store.num_entries, desc="verify entries", unit="entry", disable=not progress)
    for start in range(0, store.num_entries, block):
        span = slice(start, min(start + block, store.num_entries))
        bar.update(span.stop - span.start)
        if start // block in skip:
            continue
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
        if not flags.any():
            problems.extend(
                Problem("pool/committed", "entry not committed (unfinished store)", int(e), int(b))
                for e, b in keys
            )
            continue
        rows = {a.name: _read(store, a.path, span, problems) for a in per_block}
        # A committed entry's chunks were all written: absent means lost.
        for array in per_block:
            if missing_block_chunks(store.array(array.path), start // block):
                problems.extend(
                    Problem(array.path, "chunk missing (reads as fill value)", int(e), int(b))
                    for (e, b), done in zip(keys, flags, strict=True)
                    if done
                )
                rows[array.name] = None
        digests = rows.get("digest")
        if all_digests is not None and digests is not None:
            all_digests[span] = digests
        for i, (e, b) in enumerate(keys):
            epoch, batch = int(e), int(b)
            if not flags[i]:
                problems.append(
                    Problem("pool/committed", "entry not committed (unfinished store)", epoch, batch)
                )
                continue
            row = {name: (None if v is None else v[i]) for name, v in rows.items()}
            found = record_problems(store.attrs, epoch, batch, row)
            for path, message in found:
                problems.append(Problem(path, message, epoch, batch))
            digest = None if digests is None else digests[i]
            # The entry digest covers the record, fidelity and the stored logits digest.
            if bound and digest is not None and not found and all(row[n] is not None for n in bound_names):
                problem = entry_digest_problem(store.attrs, epoch, batch, row, digest)
                if problem:
                    problems.append(Problem("pool/digest", problem, epoch, batch))
            _check_logits(store, codec, start + i, epoch, batch, problems, digest if bound else None)
    bar.close()
    return committed, all_digests


def _check_logits(
    store: LabelStore,
    codec: Codec,
    pos: int,
    epoch: int,
    batch: int,
    problems: list[Problem],
    digest: npt.NDArray[np.uint8] | None,
) -> None:
    n = store.plan.batch_length(batch)
    try:
        raw = np.asarray(store.array("pool/logits")[pos])
        logits = codec.decode(raw)
    except READ_ERRORS as exc:
        problems.append(Problem("pool/logits", f"unreadable chunk ({describe_error(exc)})", epoch, batch))
        return
    # Encoded codecs fill a missing chunk with 0xFF bytes, float16 with NaN.
    missing = (raw[:n] == 255).all() if raw.dtype == np.uint8 else np.isnan(raw[:n]).all()
    if missing:
        problems.append(Problem("pool/logits", "chunk missing (reads as fill value)", epoch, batch))
    elif not np.isfinite(logits[:n]).all():
        problems.append(Problem("pool/logits", "non-finite logits", epoch, batch))
    elif digest is not None:
        problem = logits_digest_problem(store.attrs, epoch, batch, raw, digest)
        if problem:
            problems.append(Problem("pool/logits", problem, epoch, batch))


def _check_images(store: LabelStore, problems: list[Problem], progress: bool = False) -> None:
    pixels_array = store.array("images/pixels")
    step = pixels_array.chunks[0]
    ok = True
    for number in range(pixels_array.cdata_shape[0]):
        if missing_block_chunks(pixels_array, number):
            problems.append(Problem("images/pixels", f"chunk {number} of the images is missing"))
            return  # the images read as zeros there: nothing more to learn from reading them
    starts = range(0, store.dataset.num_images, step)
    for start in tqdm(starts, desc="verify images", unit="chunk", disable=not progress):
        try:
            pixels_array[start : start + step]
        except READ_ERRORS as exc:
            problems.append(
                Problem(
                    "images/pixels",
                    f"unreadable chunk of images {start}..{start + step - 1} ({describe_error(exc)})",
                )
            )
            ok = False
    try:
        labels = store.labels()
    except LpldStoreError as exc:
        problems.append(Problem("images/labels", str(exc)))
        return
    if labels.size and (labels.min() < 0 or labels.max() >= store.dataset.num_classes):
        problems.append(Problem("images/labels", f"labels outside [0, {store.dataset.num_classes})"))
    if not ok:
        return
    try:
        pixels = np.asarray(pixels_array[:])
    except READ_ERRORS as exc:
        problems.append(Problem("images/pixels", f"unreadable ({describe_error(exc)})"))
        return
    if images_digest(pixels, labels) != store.dataset.images_sha256:
        problems.append(Problem("images", "SHA-256 of images and labels differs from dataset.images_sha256"))


def _check_files(store: LabelStore, problems: list[Problem]) -> None:
    """Every file under a store directory must be one of its own regular files.

    Symbolic links, FIFOs, devices and sockets are reported (and never read, by anything); so is
    any file that is not a metadata document or a chunk of a declared array. Writers' lease files
    (``.leases/``) belong to the store.
    """
    root = store_path_of(store.zarr_store)
    if root is None:
        return
    bounded = store.zarr_store
    for folder, dirs, files in os.walk(root, followlinks=False):
        rel_folder = Path(folder).relative_to(root)
        for name in [*dirs, *files]:
            path = Path(folder) / name
            rel = (rel_folder / name).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                problems.append(
                    Problem(
                        "files", f"{rel} is a symbolic link (never followed: a store holds its own files)"
                    )
                )
            elif stat.S_ISDIR(mode):
                continue
            elif not stat.S_ISREG(mode):
                problems.append(Problem("files", f"{rel} is a FIFO, device or socket (never read)"))
            elif rel_folder.parts[:1] == (LEASE_DIR,):
                continue
            elif not bounded.allowed(rel):  # type: ignore[attr-defined]
                hint = (
                    "; a chunk write interrupted mid-file left it: reopening the writer "
                    "(StoreWriter.open) to finish the store removes it"
                    if name.endswith(".partial")
                    else ""
                )
                problems.append(
                    Problem(
                        "files", f"{rel} is not a file of this store (left out by pack, never read){hint}"
                    )
                )
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]


def _check_zip(source: StoreLike, problems: list[Problem]) -> None:
    # A packed store is checked against the SHA-256 that `lpldstore pack` wrote beside it.
    if not is_url(source) and Path(source).suffix == ".zip" and Path(source).is_file():
        problem = check_zip_checksum(source)
        if problem:
            problems.append(Problem("zip", problem))
