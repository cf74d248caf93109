"""Import a peer label directory into a store, and export a store to a peer layout.

Both are all-or-nothing. An import is written in a hidden sibling directory
(``.<name>.importing-<id>``) and renamed onto ``OUT`` only when every stored batch converted; a
problem anywhere (a missing file, a short batch, an unknown item, a refused pickle) is collected,
the staging directory removed and every problem reported. An interrupted import (a kill, a full
disk) leaves at most that hidden directory behind, never a store at ``OUT``. Export does the same
with ``.<name>.exporting-<id>``.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lpldstore.errors import InteropError, StoreExistsError, ValidationError
from lpldstore.format.records import DatasetInfo
from lpldstore.interop import fkd, gvbsm, hald, lpld, lpqld, sre2l
from lpldstore.interop._common import ImportOptions, PeerSource, RecordProblem
from lpldstore.interop._images import ImageSet, load_image_folder
from lpldstore.storage.reader import LabelStore, open_store
from lpldstore.storage.writer import StoreWriter

__all__ = ["ImportReport", "export_store", "import_labels"]

Scanner = Callable[[Path, ImageSet, ImportOptions], PeerSource]
_SCANNERS: dict[str, Scanner] = {
    "sre2l": sre2l.scan,
    "lpld": lpld.scan,
    "lpqld": lpqld.scan,
    "gvbsm": gvbsm.scan,
    "hald": hald.scan,
    "fkd": fkd.scan,
}
_EXPORTERS: dict[str, Callable[[LabelStore, Path, dict[int, float]], int]] = {
    "sre2l": sre2l.export,
    "lpld": lpld.export,
}
# The format stores CutMix lambdas as float32; the peers save Python floats. The exact
# values ride along in provenance.config (base64 of little-endian float64, one per position) so
# that export gives back the original files bit for bit.
_LAMS_KEY = "mix_lam_float64_b64"


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What an import did: the layout, the store written and how many entries it holds."""

    layout: str
    store: str
    entries: int
    notes: dict[str, Any]


def _staging(out: Path, what: str) -> Path:
    return out.with_name(f".{out.name}.{what}-{uuid.uuid4().hex[:8]}")


def import_labels(
    layout: str,
    src: str | os.PathLike[str],
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: ImportOptions | None = None,
    *,
    progress: bool = True,
) -> ImportReport:
    """Convert a peer label directory plus its ImageFolder of images into a new store at ``out``.

    Raises :class:`~lpldstore.errors.InteropError` listing everything that could not be converted
    (nothing is written then), :class:`~lpldstore.errors.UnsafePickleError` for a file that asks
    to run code, and :class:`~lpldstore.errors.StoreExistsError` if ``out`` exists.
    """
    if layout not in _SCANNERS:
        raise InteropError(f"Expected a layout among {sorted(_SCANNERS)}. Got {layout!r} instead.")
    target = Path(out)
    if target.exists():
        raise StoreExistsError(f"{target} already exists. Choose another output path or remove it.")
    options = options or ImportOptions()
    image_set = load_image_folder(images)
    source = _SCANNERS[layout](Path(src), image_set, options)
    classes = image_set.classes
    n = len(image_set)
    dataset = DatasetInfo(
        name=options.dataset_name or Path(images).name or "imported",
        num_classes=source.num_classes,
        num_images=n,
        image_shape=(int(image_set.pixels.shape[1]), int(image_set.pixels.shape[2]), 3),
        ipc=n // len(classes) if classes and n % len(classes) == 0 else None,
        class_names=classes if len(classes) == source.num_classes else None,
    )
    staging = _staging(target, "importing")
    problems: list[str] = []
    lams = np.full(source.plan.num_kept, np.nan, dtype="<f8")
    try:
        writer = StoreWriter.create(
            staging,
            plan=source.plan,
            images=image_set.pixels,
            labels=image_set.labels,
            dataset=dataset,
            relabel=source.relabel,
        )
        mixed = source.relabel.mix != "none"
        with writer:
            for ref in tqdm(source.refs, desc=f"import {layout}", unit="batch", disable=not progress):
                try:
                    batch = ref.read()
                    writer.write(
                        ref.epoch,
                        ref.batch,
                        logits=batch.logits,
                        params=batch.params(mix=mixed),
                        indices=batch.indices,
                    )
                except (RecordProblem, ValidationError) as exc:
                    problems.append(f"{ref.where}: {exc}")
                    continue
                if batch.mix_lam is not None:
                    lams[source.plan.position(ref.epoch, ref.batch)] = batch.mix_lam
            left = writer.todo()
        if not problems and left:
            problems.append(f"{len(left)} planned entries were not found, e.g. (epoch, batch) {left[0]}")
        if problems:
            sre2l._check_problems(problems)
        _record_provenance(staging, layout, src, images, options, source, lams)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ImportReport(layout, str(target), source.plan.num_kept, source.notes)


def _record_provenance(
    staging: Path, layout: str, src: Any, images: Any, options: ImportOptions, source: PeerSource, lams: Any
) -> None:
    # The root attributes are written once more, before the store becomes visible: provenance
    # names the source and keeps the exact lambdas.
    import zarr

    from lpldstore.storage.writer import update_provenance

    root = zarr.open_group(str(staging), mode="r+", zarr_format=3)
    provenance: dict[str, Any] = dict(root.attrs["provenance"])  # type: ignore[arg-type]
    record: dict[str, Any] = {
        "layout": layout,
        "source": os.fspath(src),
        "images": os.fspath(images),
        "options": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()
        },
        "notes": source.notes,
    }
    if np.isfinite(lams).any():
        record[_LAMS_KEY] = base64.b64encode(lams.tobytes()).decode("ascii")
    provenance["config"] = {**dict(provenance.get("config") or {}), "import": record}
    update_provenance(staging, provenance)  # keeps a version-3 store's record digests in step


def exact_lambdas(store: LabelStore) -> dict[int, float]:
    """The imported float64 CutMix lambdas by position, where they agree with the stored float32."""
    record = store.provenance.config.get("import", {})
    blob = record.get(_LAMS_KEY) if isinstance(record, dict) else None
    if not isinstance(blob, str):
        return {}
    lams = np.frombuffer(base64.b64decode(blob), dtype="<f8")
    if len(lams) != store.num_entries:
        return {}
    stored = store.metadata().mix_lam
    return {i: float(v) for i, v in enumerate(lams) if np.isfinite(v) and np.float32(v) == stored[i]}


def export_store(
    layout: str, store: str | os.PathLike[str], out: str | os.PathLike[str], *, storage_options: Any = None
) -> int:
    """Write a store's labels in a peer layout at ``out`` (a new directory); returns the file count."""
    if layout not in _EXPORTERS:
        raise InteropError(f"Expected an export layout among {sorted(_EXPORTERS)}. Got {layout!r} instead.")
    target = Path(out)
    if target.exists():
        raise StoreExistsError(f"{target} already exists. Choose another output directory or remove it.")
    staging = _staging(target, "exporting")
    try:
        with open_store(store, storage_options=storage_options) as opened:
            staging.mkdir(parents=True)
            count = _EXPORTERS[layout](opened, staging, exact_lambdas(opened))
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return count
