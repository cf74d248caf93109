"""Relabel: the teacher's soft labels for the kept entries of a pruning plan, written into a store.

For every kept entry (and only those: a 40x plan is 40x less teacher work) the augmentation
parameters are drawn with :func:`lpldstore.draw_params` (a pure function of seed, epoch and batch)
and applied with :func:`lpldstore.apply_params` on [0, 1] pixels; the :class:`Teacher`
normalizes itself, so its input is exactly what ``lpldstore verify --teacher`` rebuilds. The
store records the teacher's normalization as the dataset's mean/std, so the pool loader feeds
the student the same normalized pixels.

Resuming is the writer's: an existing store with the same settings is reopened and only
``StoreWriter.todo()`` is computed. Under torchrun rank 0 creates the store and every rank fills
its own part (``part=(rank, world)``: disjoint blocks of entries).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import lpldstore
from lpld_pipeline import _dist, artifacts
from lpld_pipeline._feedback import note
from lpld_pipeline.config import DataConfig, RelabelStageConfig, config_from_dict, config_to_dict
from lpld_pipeline.errors import ArtifactError, ConfigError
from lpld_pipeline.imagefolder import read_image_folder
from lpld_pipeline.precision import recorded_precision, relabel_precision
from lpld_pipeline.synthesize import SynthesisResult, load_synthesized
from lpld_pipeline.teacher import Teacher, load_teacher
from lpldstore.tools.identity import public_name

__all__ = ["RelabelResult", "relabel", "relabel_entries", "store_records"]

# The teacher's input is [0, 1] pixels: it normalizes itself (the contract with `verify --teacher`).
_UNIT_MEAN = (0.0, 0.0, 0.0)
_UNIT_STD = (1.0, 1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class RelabelResult:
    """Where the store is, how many entries this process computed, and how long it took."""

    store: str
    entries_computed: int
    entries_kept: int
    entries_planned: int
    seconds: float


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``; None means float32.

    ``auto`` is bf16 on a GPU and float32 on the CPU; ``bf16`` and ``fp16`` ask for that dtype on
    any device (slow on most CPUs, but it is what was asked for).
    """
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16  # "auto" on a GPU and "bf16"


@torch.no_grad()
def relabel_entries(
    writer: lpldstore.StoreWriter | lpldstore.BackgroundWriter,
    teacher: nn.Module,
    images: torch.Tensor,
    *,
    device: torch.device | None = None,
    amp: str = "auto",
    channels_last: bool = False,
    progress: bool = False,
) -> int:
    """Compute and write every entry of ``writer.todo()``; returns how many were computed.

    ``images`` are the store's uint8 ``(N, H, W, 3)`` images, on the host or already on
    ``device`` (then nothing is uploaded: pass them so to repeated calls); ``teacher`` takes
    [0, 1] pixels. The teacher is called exactly once per entry still to do; pruned entries never
    reach it. A :class:`lpldstore.BackgroundWriter` gets the logits as device tensors and copies
    them to the host in its own thread, so the teacher does not wait for the write.
    """
    device = device or torch.device("cpu")
    plan, relabel_cfg = writer.plan, writer.attrs.relabel
    pixels = images.to(device)
    hw = (int(pixels.shape[1]), int(pixels.shape[2]))
    dtype = autocast_dtype(amp, device)
    todo = writer.todo()
    background = isinstance(writer, lpldstore.BackgroundWriter)
    # Every entry's image indices in one upload (pinned, asynchronous on a GPU) instead of one
    # blocking copy per entry; entries then slice them on the device.
    batches = [plan.batch_indices(epoch, batch) for epoch, batch in todo]
    ends = np.cumsum([len(idx) for idx in batches], dtype=np.int64)
    flat = torch.from_numpy(np.concatenate(batches) if batches else np.zeros(0, np.int64))
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    rank, _ = _dist.rank_and_world()
    bar = tqdm(
        total=len(todo), desc="relabel", disable=None if progress and rank == 0 else True, file=sys.stderr
    )
    done = 0
    try:
        for i, (epoch, batch) in enumerate(todo):
            start = int(ends[i - 1]) if i else 0
            params = lpldstore.draw_params(
                relabel_cfg, hw, int(ends[i]) - start, epoch, batch, extras=relabel_cfg.extras
            )
            x = lpldstore.apply_params(
                pixels[flat[start : int(ends[i])]], params, relabel_cfg, _UNIT_MEAN, _UNIT_STD
            )
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = teacher(x).float()
            writer.write(epoch, batch, logits=logits if background else logits.cpu().numpy(), params=params)
            done += 1
            bar.update(1)
    finally:
        bar.close()
    return done


def _squeeze_data(squeeze_dir: Path) -> tuple[str, bool]:
    """The squeeze data's name and whether its flips preserve labels (no record: a photo set)."""
    record = artifacts.read_record(squeeze_dir, "squeeze")
    if record is None:
        return "distilled", True
    data = config_from_dict(DataConfig, record.get("config", {}).get("data", {}), prefix="data.")
    name = data.name if data.name != "imagefolder" else Path(data.root or "imagefolder").name
    return name, data.flip_preserves_labels


def store_records(
    config: RelabelStageConfig,
    teacher: Teacher,
    synth: SynthesisResult,
    dataset_name: str = "distilled",
    *,
    flip_preserves_labels: bool = True,
) -> dict[str, Any]:
    """The plan, dataset, relabel, codec and layout records of the store ``config`` describes.

    ``flip_prob`` None becomes 0.5 if ``flip_preserves_labels``, else 0.
    """
    images = synth.images
    if images.ndim != 4 or len(images) == 0:
        raise ArtifactError(f"Expected synthesized images (N, H, W, 3). Got shape {images.shape} instead.")
    n, h, w, _ = images.shape
    num_classes = len(synth.class_names)
    if teacher.spec.num_classes != num_classes:
        raise ArtifactError(
            f"Expected a teacher with {num_classes} classes (the synthesized images'). "
            f"Got {teacher.spec.num_classes}; use the squeeze output the images were made from."
        )
    counts = np.bincount(synth.labels, minlength=num_classes)
    ipc = int(counts[0]) if (counts == counts[0]).all() and counts[0] > 0 else None
    try:
        plan = lpldstore.PruningPlan(
            num_images=int(n),
            batch_size=config.batch_size,
            epochs=config.epochs,
            ratio=config.ratio,
            strategy=config.strategy,
            seed=config.plan_seed,
            last_batch=config.effective_last_batch,
            sampler=config.sampler,
        )
        out_hw = (config.output_size, config.output_size) if config.output_size else (int(h), int(w))
        relabel_cfg = lpldstore.RelabelConfig(
            output_size=out_hw,
            teacher=teacher.spec.arch,
            teacher_sha256=teacher.sha256(),
            crop_scale=config.crop_scale,
            crop_ratio=config.crop_ratio,
            flip_prob=config.flip_prob
            if config.flip_prob is not None
            else (0.5 if flip_preserves_labels else 0.0),
            mix=config.mix,
            mix_alpha=config.mix_alpha,
            seed=config.aug_seed,
            extras=("cutout",) if config.cutout else (),
        )
        dataset = lpldstore.DatasetInfo(
            name=dataset_name,
            num_classes=num_classes,
            num_images=int(n),
            image_shape=(int(h), int(w), 3),
            mean=tuple(float(v) for v in teacher.spec.mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in teacher.spec.std),  # type: ignore[arg-type]
            ipc=ipc,
            class_names=tuple(synth.class_names),
        )
        codec = lpldstore.CodecConfig(name=config.codec, params=dict(config.codec_params))
        layout = lpldstore.Layout(block_entries=config.block_entries)
    except lpldstore.ConfigError as exc:
        raise ConfigError(f"Invalid relabel settings: {exc}") from exc
    return {"plan": plan, "dataset": dataset, "relabel": relabel_cfg, "codec": codec, "layout": layout}


def _check_same_store(path: Path, records: dict[str, Any]) -> None:
    with lpldstore.open_store(path) as store:
        found = {
            "plan": store.plan,
            "relabel": store.relabel,
            "codec": store.codec,
            "layout": store.layout,
            "dataset": dataclasses.replace(store.dataset, images_sha256=None),
        }
    for name, value in found.items():
        if value != records[name]:
            raise ConfigError(
                f"Expected the store at {str(path)!r} to have been made with these settings to resume it. "
                f"Its {name} record differs: stored {value.to_dict()}, configured {records[name].to_dict()}. "
                "Choose another out, or delete the store to start over."
            )


# Config fields that hold local paths: the store's provenance names them by their last component.
_PATH_FIELDS = ("squeeze_dir", "synth_dir", "image_folder", "teacher", "out")


def provenance_record(config: RelabelStageConfig, teacher: Teacher) -> dict[str, Any]:
    """The store's provenance: the config with every path reduced to its name, and the teacher's identity.

    A store is published (``lpldstore card``, ``pack``), so it must not carry the directories of
    the machine that made it; the images are named by the dataset record's SHA-256 and the
    teacher by the SHA-256 of its weights.
    """
    settings = config_to_dict(config)
    for key in _PATH_FIELDS:
        if settings[key]:
            settings[key] = public_name(settings[key])
    return {
        "stage": "relabel",
        "config": settings,
        "teacher": {
            "arch": teacher.spec.arch,
            "file": public_name(config.teacher or artifacts.TEACHER),
            "sha256": teacher.sha256(),
            "mean": list(teacher.spec.mean),
            "std": list(teacher.spec.std),
        },
    }


def _relabel_inputs(config: RelabelStageConfig) -> tuple[SynthesisResult, Teacher, str, bool]:
    """The images, the teacher, the dataset's name and whether flips preserve its labels.

    Everything is read and checked here, before the store is created, so a bad input leaves
    nothing behind.
    """
    if not config.out:
        raise ConfigError("Expected out (the store to write) for relabel. Got an empty string.")
    if not (config.synth_dir or config.image_folder):
        raise ConfigError(
            "Expected the images: synth_dir (an `lpld synthesize` output) or image_folder (class folders of "
            "JPEG/PNG images). Got neither."
        )
    if not (config.teacher or config.squeeze_dir):
        raise ConfigError(
            "Expected the teacher: teacher (a checkpoint, state dict or TorchScript file) or squeeze_dir "
            "(an `lpld squeeze` output). Got neither."
        )
    if config.image_folder:
        synth = read_image_folder(config.image_folder, image_size=config.image_size)
    else:
        if config.image_size:
            raise ConfigError(
                "Expected image_size 0 with synth_dir (synthesized images keep their size; use output_size "
                f"for the crops). Got {config.image_size}."
            )
        synth = load_synthesized(config.synth_dir)
    path = Path(config.teacher) if config.teacher else Path(config.squeeze_dir) / artifacts.TEACHER
    teacher = load_teacher(
        path,
        num_classes=len(synth.class_names),
        arch=config.teacher_arch,
        mean=config.mean,
        std=config.std,
    )
    if config.squeeze_dir:
        name, flips_ok = _squeeze_data(Path(config.squeeze_dir))
    else:
        name = public_name(config.image_folder) if config.image_folder else "distilled"
        flips_ok = True
    return synth, teacher, name, flips_ok


def _check_same_precision(path: Path, precision: dict[str, Any]) -> None:
    with lpldstore.open_store(path) as store:
        stored = recorded_precision(store.provenance.config)
    if stored is not None and stored["precision"] != precision["precision"]:
        raise ConfigError(
            f"Expected to continue the store at {str(path)!r} in the precision it was started in "
            f"({stored['precision']} on {stored['device_type']}), so that `lpld verify --teacher` can check "
            f"every entry alike. Got {precision['precision']} on {precision['device_type']}; set amp (and "
            "device) as the first run did, or start another store."
        )


def relabel(config: RelabelStageConfig) -> RelabelResult:
    """Run the relabel stage: fill (or continue filling) the store at ``config.out``."""
    synth, teacher, name, flips_ok = _relabel_inputs(config)
    out = Path(config.out)
    device = _dist.resolve_device(config.device)
    _dist.init_from_env(device)
    rank, world = _dist.rank_and_world()
    teacher = teacher.to(device)
    if config.channels_last:
        teacher.model.to(memory_format=torch.channels_last)
    records = store_records(config, teacher, synth, name, flip_preserves_labels=flips_ok)
    existed = out.exists()
    _dist.barrier()  # every rank has looked before rank 0 may create the store
    if existed and not config.resume:
        raise ConfigError(
            f"Expected no store at {str(out)!r} with resume=false. Got an existing path; choose another out, "
            "delete it, or set resume=true to continue it."
        )
    # What `verify --teacher` must reproduce: the arithmetic of this run, recorded with the store.
    precision = relabel_precision(autocast_dtype(config.amp, device), device)
    if existed:
        _check_same_store(out, records)
        _check_same_precision(out, precision)
    start = time.perf_counter()
    part = (rank, world)
    provenance = provenance_record(config, teacher) | {"precision": precision}
    if not existed and rank == 0:
        writer = lpldstore.StoreWriter.create(
            out, images=synth.images, labels=synth.labels, config=provenance, part=part, **records
        )
    _dist.barrier()
    if existed or rank != 0:
        writer = lpldstore.StoreWriter.open(out, part=part)
    if existed:
        left = len(writer.todo())
        mine = _part_size(records["plan"].num_kept, records["layout"].block_entries, rank, world)
        note(
            f"relabel: {out.name} is complete; nothing to compute"
            if left == 0
            else f"relabel: resuming {out.name} at entry {mine - left} of {mine}"
        )
    # On a GPU the copy of the logits to the host and the write overlap the next entries' teacher.
    sink = lpldstore.BackgroundWriter(writer) if device.type == "cuda" else writer
    with sink, _dist.cudnn_autotune(device):
        computed = relabel_entries(
            sink,
            teacher,
            torch.from_numpy(synth.images),
            device=device,
            amp=config.amp,
            channels_last=config.channels_last,
            progress=config.progress,
        )
    _dist.barrier()
    plan = records["plan"]
    return RelabelResult(
        store=str(out),
        entries_computed=computed,
        entries_kept=plan.num_kept,
        entries_planned=plan.total_entries,
        seconds=time.perf_counter() - start,
    )


def _part_size(kept: int, block: int, rank: int, world: int) -> int:
    """How many kept entries part ``rank`` of ``world`` holds: the writer gives parts whole blocks in turn."""
    return int(((np.arange(kept) // block) % world == rank).sum())
