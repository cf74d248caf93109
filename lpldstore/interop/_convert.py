"""Import a peer label directory into a store, and export a store to a peer layout.

Both are all-or-nothing. An import is written in a hidden sibling directory
(``.<name>.importing-<id>``) and renamed onto ``OUT`` only when every stored batch converted; a
problem anywhere (a missing file, a short batch, an unknown item, a refused pickle) is collected,
the staging directory removed and every problem reported. An interrupted import (a kill, a full
disk) leaves at most that hidden directory behind, never a store at ``OUT``. Export does the same
with ``.<name>.exporting-<id>``; its sidecar (:mod:`lpldstore.interop.sidecar`) and image folder
are staged too and put in place before the label directory, which appears last.

Imports cannot lie: a directory whose files say it is another peer's is refused
(:mod:`lpldstore.interop.detect`); the output size comes from the export sidecar, the flags or
square images, never from a default; an exported directory is read back with its sidecar's
records, after checking that its files and images are the exported ones.
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
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import CodecConfig, DatasetInfo, Layout, RelabelConfig
from lpldstore.format.schema import images_digest
from lpldstore.interop import fkd, gvbsm, hald, lpld, lpqld, sre2l
from lpldstore.interop._common import PIL_KERNEL, ImportOptions, PeerSource, RecordProblem
from lpldstore.interop._images import ImageSet, class_folders, load_image_folder, write_image_folder
from lpldstore.interop.detect import check_layout
from lpldstore.interop.sidecar import ExportRecord, read_sidecar, sidecar_path, sidecar_text
from lpldstore.storage.reader import LabelStore, open_store
from lpldstore.storage.writer import StoreWriter
from lpldstore.tools.identity import public_name, store_identity

__all__ = ["ExportReport", "ImportReport", "export_store", "import_labels"]

Scanner = Callable[[Path, ImageSet, ImportOptions], PeerSource]
_SCANNERS: dict[str, Scanner] = {
    "sre2l": sre2l.scan,
    "lpld": lpld.scan,
    "lpqld": lpqld.scan,
    "gvbsm": gvbsm.scan,
    "hald": hald.scan,
    "fkd": fkd.scan,
}
_EXPORTERS: dict[str, Callable[..., int]] = {
    "sre2l": sre2l.export,
    "lpld": lpld.export,
}
# The format stores CutMix lambdas as float32; the peers save Python floats. The exact
# values ride along in provenance.config (base64 of little-endian float64, one per position) so
# that export gives back the original files bit for bit.
_LAMS_KEY = "mix_lam_float64_b64"


# What a bare peer directory cannot say about the normalization: the SRe2L family's ImageNet
# recipes normalize with ImageNet's mean and std, so an import without --mean/--std assumes them
# and says so in its notes.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What an import did: the layout, the store written and how many entries it holds."""

    layout: str
    store: str
    entries: int
    notes: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What an export wrote: batch files, the sidecar beside them, the image folder (if asked)."""

    layout: str
    out: str
    files: int
    sidecar: str
    images: str | None
    notes: dict[str, str]


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
    src_path = Path(src)
    check_layout(layout, src_path)  # from file names alone, before any image or pickle is read
    record = None if options.ignore_sidecar else read_sidecar(src_path)
    notes: dict[str, Any] = {}
    if record is not None:
        _check_flags(record, layout, options, sidecar_path(src_path))
        options = dataclasses.replace(options, output_size=record.relabel.output_size)
    image_set = load_image_folder(images)
    if record is not None:
        _check_images(record, image_set, Path(images), sidecar_path(src_path))
        notes["sidecar"] = (
            f"records of the exported store {record.source.get('name')!r} ({sidecar_path(src_path).name})"
        )
    else:
        options = dataclasses.replace(
            options, output_size=_output_size(options, image_set, Path(images), notes)
        )
    source = _SCANNERS[layout](src_path, image_set, options)
    if record is not None:
        plan, relabel, dataset, codec, store_layout = _records_from_sidecar(
            record, source, options, notes, src_path
        )
    else:
        plan, relabel, codec, store_layout = source.plan, source.relabel, CodecConfig(), Layout()
        dataset = _dataset(options, image_set, source, Path(images), notes)
    staging = _staging(target, "importing")
    problems: list[str] = []
    lams = np.full(plan.num_kept, np.nan, dtype="<f8")
    try:
        writer = StoreWriter.create(
            staging,
            plan=plan,
            images=image_set.pixels,
            labels=image_set.labels,
            dataset=dataset,
            relabel=relabel,
            codec=codec,
            layout=store_layout,
        )
        mixed = relabel.mix != "none"
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
                    lams[plan.position(ref.epoch, ref.batch)] = batch.mix_lam
            left = writer.todo()
        if not problems and left:
            problems.append(f"{len(left)} planned entries were not found, e.g. (epoch, batch) {left[0]}")
        if problems and "output_size" in notes and any("'mix_box'" in p for p in problems):
            problems.append(
                f"the output size {relabel.output_size} was taken from the images; pass --output-size with the "
                "size the relabel step resized its crops to"
            )
        if problems:
            sre2l._check_problems(problems)
        _record_provenance(staging, layout, src, images, options, source, lams, record)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ImportReport(layout, str(target), plan.num_kept, {**source.notes, **notes})


def _output_size(
    options: ImportOptions, images: ImageSet, where: Path, notes: dict[str, Any]
) -> tuple[int, int]:
    """The relabel crop size: the option, else the size of square images (never a silent default)."""
    if options.output_size is not None:
        return options.output_size
    height, width = images.hw
    if height != width:
        raise InteropError(
            f"Expected --output-size (the size the relabel step resized its crops to). Got none, and the images in "
            f"{where} are {height}x{width}, not square, so it cannot be taken from them. Pass e.g. --output-size 224."
        )
    notes["output_size"] = (
        f"{height}x{width}, taken from the images (pass --output-size if the relabel crops were resized otherwise)"
    )
    return height, width


def _dataset(
    options: ImportOptions, images: ImageSet, source: PeerSource, where: Path, notes: dict[str, Any]
) -> DatasetInfo:
    classes, n = images.classes, len(images)
    if options.mean is None or options.std is None:
        notes["normalization"] = (
            f"mean {options.mean or _IMAGENET_MEAN}, std {options.std or _IMAGENET_STD}"
            f"{' (ImageNet, assumed)' if options.mean is None and options.std is None else ''}: pass --mean and "
            "--std if the teacher normalized otherwise"
        )
    return DatasetInfo(
        name=options.dataset_name or where.name or "imported",
        num_classes=source.num_classes,
        num_images=n,
        image_shape=(int(images.pixels.shape[1]), int(images.pixels.shape[2]), 3),
        mean=options.mean or _IMAGENET_MEAN,
        std=options.std or _IMAGENET_STD,
        ipc=n // len(classes) if classes and n % len(classes) == 0 else None,
        class_names=classes if len(classes) == source.num_classes else None,
    )


def _check_flags(record: ExportRecord, layout: str, options: ImportOptions, path: Path) -> None:
    """An exported directory is read with its sidecar: refuse another layout or contradicting flags."""
    if record.layout != layout:
        raise InteropError(
            f"Expected a {layout} directory for --from {layout}. Got one that lpldstore exported in the "
            f"{record.layout} layout ({path.name} says so). Import it with --from {record.layout}."
        )
    given = {
        "--output-size": (options.output_size, record.relabel.output_size),
        "--mean": (options.mean, record.dataset.mean),
        "--std": (options.std, record.dataset.std),
        "--teacher": (options.teacher, record.relabel.teacher),
    }
    for flag, (value, recorded) in given.items():
        if value is not None and value != recorded:
            raise InteropError(
                f"Expected {flag} to agree with the export sidecar {path.name}, which records {recorded!r}. "
                f"Got {value!r}. Drop the flag, or pass --ignore-sidecar to import the files as plain peer labels."
            )


def _check_images(record: ExportRecord, images: ImageSet, where: Path, path: Path) -> None:
    digest = images_digest(images.pixels, images.labels)
    if digest != record.dataset.images_sha256:
        raise InteropError(
            f"Expected the images the labels were exported with (SHA-256 {record.dataset.images_sha256}, recorded in "
            f"{path.name}). Got other images or labels in {where} (SHA-256 {digest}). Pass the folder that "
            "`lpldstore export --images` wrote, or --ignore-sidecar to pair these images with the labels anyway."
        )


def _records_from_sidecar(
    record: ExportRecord, source: PeerSource, options: ImportOptions, notes: dict[str, Any], src: Path
) -> tuple[PruningPlan, RelabelConfig, DatasetInfo, CodecConfig, Layout]:
    """The exported store's records, once the files are shown to be what the sidecar describes."""
    plan, found = record.plan, source.plan
    same = (
        plan.num_images == found.num_images
        and plan.batch_size == found.batch_size
        and plan.batches_per_epoch == found.batches_per_epoch
        and plan.num_kept == found.num_kept
        and np.array_equal(plan.kept_keys, found.kept_keys)
        and record.entries == found.num_kept
        and record.dataset.num_classes == source.num_classes
        and record.relabel.mix == source.relabel.mix
    )
    if not same:
        raise InteropError(
            f"Expected the label files that {sidecar_path(src).name} describes ({record.entries} entries of "
            f"{plan.batch_size} images, {record.dataset.num_classes} classes). Got {found.num_kept} entries of "
            f"{found.batch_size} images, {source.num_classes} classes in {src}: the files changed after export. "
            "Pass --ignore-sidecar to import them as they are."
        )
    codec = record.codec
    if codec.name != "float16":
        notes["codec"] = (
            f"float16: the export wrote the {codec.name} codec's decoded logits as float16; "
            f"`lpldstore recode --codec {codec.name}` encodes them again"
        )
        codec = CodecConfig(temperature=codec.temperature)
    dataset = record.dataset
    if options.dataset_name:
        dataset = dataclasses.replace(dataset, name=options.dataset_name)
    return plan, record.relabel, dataset, codec, record.store_layout


def _record_provenance(
    staging: Path,
    layout: str,
    src: Any,
    images: Any,
    options: ImportOptions,
    source: PeerSource,
    lams: Any,
    record: ExportRecord | None,
) -> None:
    # The root attributes are written once more, before the store becomes visible: provenance
    # names the source (by name: provenance is published with the store) and keeps the exact lambdas.
    import zarr

    from lpldstore.storage.writer import update_provenance

    root = zarr.open_group(str(staging), mode="r+", zarr_format=3)
    provenance: dict[str, Any] = dict(root.attrs["provenance"])  # type: ignore[arg-type]
    entry: dict[str, Any] = {
        "layout": layout,
        "source": public_name(src),
        "images": public_name(images),
        "options": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()
        },
        "notes": source.notes,
    }
    if record is not None:
        entry["exported_from"] = record.source
    if np.isfinite(lams).any():
        entry[_LAMS_KEY] = base64.b64encode(lams.tobytes()).decode("ascii")
    provenance["config"] = {**dict(provenance.get("config") or {}), "import": entry}
    if record is not None and record.source:
        provenance["parents"] = [{"operation": f"export --to {layout}", **record.source}]
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
    layout: str,
    store: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    images: str | os.PathLike[str] | None = None,
    storage_options: Any = None,
    progress: bool = False,
) -> ExportReport:
    """Write a store's labels in a peer layout at ``out`` (a new directory), its sidecar beside it
    (``OUT.lpldstore.json``) and, with ``images``, the images as an ImageFolder there."""
    if layout not in _EXPORTERS:
        raise InteropError(f"Expected an export layout among {sorted(_EXPORTERS)}. Got {layout!r} instead.")
    target = Path(out)
    if target.exists():
        raise StoreExistsError(f"{target} already exists. Choose another output directory or remove it.")
    image_dir = None if images is None else Path(images)
    if image_dir is not None and image_dir.exists():
        raise StoreExistsError(
            f"{image_dir} already exists. Choose another folder for the images or remove it."
        )
    side = sidecar_path(target)  # one left by an export killed before its labels appeared is replaced
    tag = uuid.uuid4().hex[:8]
    staging = _staging(target, "exporting")
    side_tmp = side.with_name(f".{side.name}.partial-{tag}")
    image_staging = None if image_dir is None else _staging(image_dir, "exporting")
    placed: list[Path] = []
    try:
        with open_store(store, storage_options=storage_options) as opened:
            _check_exportable(opened, layout)
            folders = class_folders(opened.dataset.num_classes, opened.dataset.class_names)
            staging.mkdir(parents=True)
            count = _EXPORTERS[layout](opened, staging, exact_lambdas(opened), progress=progress)
            if image_staging is not None:
                image_staging.mkdir(parents=True)
                write_image_folder(
                    opened.images(), opened.labels(), folders, image_staging, progress=progress
                )
            record = ExportRecord(
                layout=layout,
                entries=count,
                dataset=opened.dataset,
                relabel=opened.relabel,
                plan=opened.plan,
                codec=opened.codec,
                store_layout=opened.layout,
                source=store_identity(opened),
                images=None if image_dir is None else image_dir.name,
            )
            notes = _export_notes(opened, layout)
        side_tmp.write_text(sidecar_text(record), encoding="utf-8")
        if image_staging is not None and image_dir is not None:
            os.rename(image_staging, image_dir)
            placed.append(image_dir)
        os.replace(side_tmp, side)
        placed.append(side)
        os.rename(staging, target)  # last: a label directory at OUT is a finished export
    except BaseException:
        for path in (staging, image_staging, *placed):
            if path is not None and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        for path in (side_tmp, *placed):
            if path is not None and path.is_file():
                path.unlink(missing_ok=True)
        raise
    return ExportReport(
        layout, str(target), count, str(side), None if image_dir is None else str(image_dir), notes
    )


def _check_exportable(store: LabelStore, layout: str) -> None:
    if store.relabel.extras:
        raise InteropError(
            f"{store.where}: the store holds {list(store.relabel.extras)} augmentation records, which the "
            f"{layout} layout has no place for here. Train from the store itself."
        )


def _export_notes(store: LabelStore, layout: str) -> dict[str, str]:
    notes = {}
    if store.relabel.kernel != PIL_KERNEL:
        notes["kernel"] = (
            f"the teacher saw crops resized by {store.relabel.kernel}; {layout} readers replay them with PIL, whose "
            "pixels differ slightly (train from the store to replay exactly)"
        )
    if store.codec.name != "float16":
        notes["codec"] = f"the files hold the {store.codec.name} codec's decoded logits, as float16"
    return notes
