"""Synthesize: LPLD's class-wise recover, with many classes packed into one batch.

A *group* is a set of images that share one augmentation draw per iteration and whose BN-input
moments are matched together: in ``class`` mode (LPLD) the images of one class against that
class's statistics, in ``class_global`` mode ("+C") the same groups against the teacher's global
running statistics, and in ``mixed`` mode (SRe2L/CDA) batches across classes against the global
statistics. The loss of a group is

    CE(teacher(aug(x)), y) + r_bn * sum_l w_l (||mu_l - mu_B||_2 + ||var_l - var_B||_2)

with ``w_1 = first_bn_multiplier``. In eval mode every sample's forward pass is independent of
its batch-mates, the BN moments are taken per group (segment sums by group id) and Adam is
elementwise, so optimizing the sum of the group losses of many packed groups gives the same
images as one group at a time; the random draws are pure functions of (seed, group, iteration).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lpld_pipeline import _augment, _dist, artifacts
from lpld_pipeline._feedback import note
from lpld_pipeline.bnstats import ClassBNStats, batchnorm_layers, load_class_stats
from lpld_pipeline.config import SynthesisConfig, config_to_dict
from lpld_pipeline.errors import ArtifactError, ConfigError
from lpld_pipeline.teacher import Teacher, load_teacher_checkpoint

__all__ = [
    "Group",
    "jpeg_roundtrip",
    "SynthesisResult",
    "load_synthesized",
    "plan_groups",
    "save_imagefolder",
    "synthesize",
    "synthesize_images",
]

GLOBAL = -1  # target of a group matched to the teacher's global running statistics
# Where an interrupted synthesis keeps its finished batches (under the output directory), and the
# config fields that do not change the pixels of a batch.
_PARTIAL = ".partial"
_NOT_IN_PIXELS = ("out", "progress", "device", "write_imagefolder", "image_format", "jpeg_quality")
_MIXED_KEY = -1  # first key column of mixed-mode groups; class indices are >= 0


@dataclasses.dataclass(frozen=True)
class Group:
    """Images optimized under one augmentation draw and one set of BN moments."""

    key: tuple[int, int]
    labels: np.ndarray  # int64 (n,)
    indices: np.ndarray  # int64 (n,), index of each image within its class
    target: int  # class whose statistics are matched, or GLOBAL


@dataclasses.dataclass(frozen=True)
class SynthesisResult:
    """Synthesized images, uint8 ``(N, H, W, 3)``, sorted by (label, index within class)."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    class_names: tuple[str, ...]


def plan_groups(config: SynthesisConfig, classes: Sequence[int]) -> list[Group]:
    """The groups ``config`` asks for over ``classes``, in a fixed order."""
    size = config.effective_group_size
    groups: list[Group] = []
    if config.mode == "mixed":
        # SRe2L/CDA order: image k of every class, then image k + 1, cut into batches of ``size``.
        pairs = [(c, k) for k in range(config.ipc) for c in classes]
        for start in range(0, len(pairs), size):
            chunk = np.asarray(pairs[start : start + size], dtype=np.int64)
            groups.append(Group((_MIXED_KEY, start // size), chunk[:, 0], chunk[:, 1], GLOBAL))
        return groups
    for c in classes:
        for part, start in enumerate(range(0, config.ipc, size)):
            idx = np.arange(start, min(config.ipc, start + size), dtype=np.int64)
            target = c if config.mode == "class" else GLOBAL
            groups.append(Group((c, part), np.full(len(idx), c, dtype=np.int64), idx, target))
    return groups


class _BNMatch:
    """Forward pre-hooks that add each group's BN-matching loss for the current batch."""

    def __init__(self, model: nn.Module, first_bn_multiplier: float) -> None:
        self.layers = batchnorm_layers(model)
        self.weights = [first_bn_multiplier] + [1.0] * (len(self.layers) - 1)
        self.terms: list[torch.Tensor] = []
        self.group_of: torch.Tensor | None = None
        self.counts = torch.ones(1)
        self.target_mean: dict[str, torch.Tensor] = {}
        self.target_var: dict[str, torch.Tensor] = {}
        self._handles = [
            m.register_forward_pre_hook(self._hook(i, n)) for i, (n, m) in enumerate(self.layers)
        ]

    def _hook(self, index: int, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            group_of = self.group_of
            if group_of is None:
                return
            x = inputs[0]
            x = x.to(torch.promote_types(x.dtype, torch.float32))  # moments of bf16 activations in fp32
            dims = tuple(range(2, x.ndim))
            g, c = self.counts.numel(), x.shape[1]
            counts = self.counts.to(x.dtype)[:, None]
            mean = x.new_zeros(g, c).index_add(0, group_of, x.mean(dims)) / counts
            centred = x - mean[group_of].view(x.shape[0], c, *([1] * len(dims)))
            var = x.new_zeros(g, c).index_add(0, group_of, centred.square().mean(dims)) / counts
            r = torch.linalg.vector_norm(var - self.target_var[name].to(x.dtype), dim=1)
            r = r + torch.linalg.vector_norm(mean - self.target_mean[name].to(x.dtype), dim=1)
            self.terms.append(self.weights[index] * r)

        return hook

    def set_targets(
        self, stats: ClassBNStats | None, targets: Sequence[int], device: torch.device, dtype: torch.dtype
    ) -> None:
        idx = torch.as_tensor(list(targets), dtype=torch.long)
        for name, m in self.layers:
            if stats is not None and name not in stats.mean:
                raise ArtifactError(f"Expected statistics for BN layer {name!r}. The stats file has none.")
            rows_mean: list[torch.Tensor] = []
            rows_var: list[torch.Tensor] = []
            for t in idx.tolist():
                if t == GLOBAL:
                    rows_mean.append(cast(torch.Tensor, m.running_mean))
                    rows_var.append(cast(torch.Tensor, m.running_var))
                else:
                    assert stats is not None  # class targets only come with statistics
                    rows_mean.append(stats.mean[name][t])
                    rows_var.append(stats.var[name][t])
            self.target_mean[name] = torch.stack([r.to(device, dtype) for r in rows_mean])
            self.target_var[name] = torch.stack([r.to(device, dtype) for r in rows_var])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _optimize(
    model: nn.Module,
    match: _BNMatch,
    groups: Sequence[Group],
    config: SynthesisConfig,
    *,
    size: int,
    bounds: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    bar: Any,
    callback: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """One batch of groups from their initial noise to the last iterate (normalized space)."""
    sizes = torch.as_tensor([len(g.labels) for g in groups])
    group_of = torch.repeat_interleave(torch.arange(len(groups)), sizes).to(device)
    labels = torch.as_tensor(np.concatenate([g.labels for g in groups])).to(device)
    keys = np.asarray([g.key for g in groups], dtype=np.int64)
    init = [
        torch.randn(
            len(g.labels),
            3,
            size,
            size,
            generator=torch.Generator().manual_seed(_augment.init_seed(config.seed, g.key)),
        )
        for g in groups
    ]
    x = torch.cat(init).to(device=device, dtype=dtype).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=config.lr, betas=config.betas, eps=config.eps)
    match.group_of = group_of
    match.counts = sizes.to(device)
    use_amp = config.amp == "bf16"
    lo, hi = bounds
    for it in range(config.iterations):
        for pg in opt.param_groups:
            pg["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * it / config.iterations))
        params = _augment.draw_params(
            config.seed,
            keys,
            it,
            size=(size, size),
            scale=config.crop_scale,
            ratio=config.crop_ratio,
            flip=bool(config.flip),
            jitter=config.jitter,
            symmetric_jitter=config.jitter_range == "symmetric",
        )
        inputs = _augment.apply_params(x, params, group_of)
        if config.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        match.terms.clear()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(inputs)
        ce = F.cross_entropy(logits.to(x.dtype), labels, reduction="none")
        ce_group = x.new_zeros(len(groups)).index_add(0, group_of, ce) / match.counts.to(x.dtype)
        loss = ce_group + config.r_bn * torch.stack(match.terms).sum(0)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        bar.update(1)
        if callback is not None:
            callback(it)
    match.group_of = None
    return x.detach()


class _Parts:
    """Each finished batch's pixels as one file, so that an interrupted synthesis resumes.

    A batch's images are a pure function of the config, the teacher and the batch's groups, so a
    batch read back equals the batch computed again, bit for bit. Files appear complete or not at
    all (written beside, then renamed). ``stamp`` names what made them: parts of another config,
    teacher or world size are discarded.
    """

    def __init__(self, directory: Path, stamp: dict[str, Any]) -> None:
        self.directory = directory
        stamp_path = directory / "stamp.json"
        if directory.is_dir():
            try:
                same = json.loads(stamp_path.read_text(encoding="utf-8")) == stamp
            except (OSError, ValueError):
                same = False
            if not same:
                note(
                    f"synthesize: discarding the partial output of another config in {directory.parent.name}"
                )
                shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not stamp_path.is_file():
            tmp = stamp_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stamp, sort_keys=True), encoding="utf-8")
            os.replace(tmp, stamp_path)

    def path(self, batch: int) -> Path:
        return self.directory / f"batch-{batch:06d}.npy"

    def load(self, batch: int, shape: tuple[int, ...]) -> torch.Tensor | None:
        """The batch's uint8 NHWC pixels if a complete file of that shape is there, else None."""
        try:
            pixels = np.load(self.path(batch))
        except (OSError, ValueError):
            return None
        return torch.from_numpy(pixels) if pixels.shape == shape and pixels.dtype == np.uint8 else None

    def save(self, batch: int, pixels: torch.Tensor) -> None:
        path = self.path(batch)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, pixels.numpy())
        os.replace(tmp, path)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.directory.parent.rmdir()  # the last rank to finish removes the empty parent


def synthesize_images(
    teacher: Teacher,
    stats: ClassBNStats | None,
    config: SynthesisConfig,
    *,
    image_size: int,
    class_names: Sequence[str],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
    parts: _Parts | None = None,
) -> SynthesisResult:
    """Synthesize ``config.ipc`` images per class; this rank's share under torchrun.

    With ``parts``, every finished batch is saved there and a batch already saved is read back
    instead of computed (an interrupted synthesis resumes; the result is the same bit for bit).

    ``stats`` may be None only for modes that match global statistics. ``callback(batch,
    iteration)`` runs after every optimizer step (timing, logging). ``config.channels_last``
    converts the teacher's memory format in place (values are unchanged). ``config.flip`` None
    flips where the statistics' data say flips preserve labels (always, without statistics).
    """
    device = device or torch.device("cpu")
    if config.flip is None:
        config = dataclasses.replace(config, flip=stats.flip_preserves_labels if stats is not None else True)
    num_classes = len(class_names)
    classes = list(config.classes) or list(range(num_classes))
    bad = [c for c in classes if c >= num_classes]
    if bad:
        raise ConfigError(f"Expected classes in [0, {num_classes}). Got {bad} instead.")
    if config.mode == "class":
        if stats is None:
            raise ConfigError("Expected class statistics for mode='class'; run `lpld squeeze` first.")
        empty = [c for c in classes if int(stats.images_per_class[c]) == 0]
        if empty:
            raise ArtifactError(
                f"Expected real images of every class in the statistics. Classes {empty} had none."
            )
    rank, world = _dist.rank_and_world()
    groups = plan_groups(config, classes)[rank::world]
    teacher = teacher.to(device).eval()
    if config.channels_last:
        teacher.model.to(memory_format=torch.channels_last)
    match = _BNMatch(teacher.model, config.first_bn_multiplier)
    model: nn.Module = teacher.model
    if config.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    bounds = (
        teacher.normalize(torch.zeros(1, 3, 1, 1, device=device, dtype=dtype)),
        teacher.normalize(torch.ones(1, 3, 1, 1, device=device, dtype=dtype)),
    )
    batches = [
        groups[i : i + config.groups_per_batch] for i in range(0, len(groups), config.groups_per_batch)
    ]
    outputs: list[torch.Tensor] = []
    bar = tqdm(
        total=len(batches) * config.iterations,
        desc="synthesize",
        disable=None if progress and rank == 0 else True,
        file=sys.stderr,
    )
    shapes = [(sum(len(g.labels) for g in batch), image_size, image_size, 3) for batch in batches]
    saved = {} if parts is None else {b: parts.load(b, shapes[b]) for b in range(len(batches))}
    done = sum(v is not None for v in saved.values())
    if done:
        note(f"synthesize: resuming: {done} of {len(batches)} batches are done; skipping them")
    try:
        for b, batch in enumerate(batches):
            part = saved.get(b)
            if part is not None:
                outputs.append(part)
                bar.update(config.iterations)
                continue
            match.set_targets(stats, [g.target for g in batch], device, dtype)
            step = None if callback is None else functools.partial(callback, b)
            z = _optimize(
                model,
                match,
                batch,
                config,
                size=image_size,
                bounds=bounds,
                device=device,
                dtype=dtype,
                bar=bar,
                callback=step,
            )
            pixels = teacher.denormalize(z).clamp(0, 1).mul(255).round().to(torch.uint8)
            outputs.append(pixels.permute(0, 2, 3, 1).cpu().contiguous())
            if parts is not None:
                parts.save(b, outputs[-1])
    finally:
        match.remove()
        bar.close()
    images = torch.cat(outputs).numpy() if outputs else np.zeros((0, image_size, image_size, 3), np.uint8)
    labels = np.concatenate([g.labels for g in groups]) if groups else np.zeros(0, np.int64)
    indices = np.concatenate([g.indices for g in groups]) if groups else np.zeros(0, np.int64)
    order = np.lexsort((indices, labels))
    return SynthesisResult(images[order], labels[order], indices[order], tuple(class_names))


def save_imagefolder(
    result: SynthesisResult, root: str | Path, *, image_format: str = "png", jpeg_quality: int = 75
) -> None:
    """Write ``root/<class name>/<class>_<index>.png`` (or ``.jpg``), readable by torchvision ImageFolder."""
    from PIL import Image

    root = Path(root)
    suffix = ".jpg" if image_format == "jpeg" else ".png"
    for image, label, index in zip(result.images, result.labels, result.indices, strict=True):
        folder = root / result.class_names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{int(label):05d}_{int(index):04d}{suffix}"
        if image_format == "jpeg":
            Image.fromarray(image).save(path, format="JPEG", quality=jpeg_quality)
        else:
            Image.fromarray(image).save(path)


def jpeg_roundtrip(images: np.ndarray, quality: int) -> np.ndarray:
    """The pixels of ``images`` (uint8 (N, H, W, 3)) after saving as JPEG of ``quality`` and loading."""
    import io

    from PIL import Image

    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def load_synthesized(out: str | Path) -> SynthesisResult:
    """Read a synthesize output directory (all ranks' shards), sorted by (label, index)."""
    out = Path(out)
    shards = sorted(out.glob(artifacts.IMAGES_GLOB))
    if not shards:
        raise ArtifactError(f"Expected images*.npz in {str(out)!r}. Got none; run `lpld synthesize`.")
    parts = [np.load(p) for p in shards]
    images = np.concatenate([p["images"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    indices = np.concatenate([p["indices"] for p in parts])
    names = tuple(json.loads(str(parts[0]["class_names"])))
    order = np.lexsort((indices, labels))
    return SynthesisResult(images[order], labels[order], indices[order], names)


def synthesize(config: SynthesisConfig) -> SynthesisResult:
    """Run the synthesize stage from ``config.squeeze_dir``; write outputs to ``config.out`` if set."""
    if not config.squeeze_dir:
        raise ConfigError("Expected squeeze_dir (the output of `lpld squeeze`). Got an empty string.")
    squeeze_dir = Path(config.squeeze_dir)
    device = _dist.resolve_device(config.device)
    _dist.init_from_env(device)
    rank, world = _dist.rank_and_world()
    stats = load_class_stats(squeeze_dir)
    teacher = load_teacher_checkpoint(squeeze_dir / artifacts.TEACHER)
    stats.check_teacher(teacher)
    parts = None
    if config.out:
        # What a batch's pixels depend on; progress bars, the output's formats and place do not count.
        stamp = {
            "config": {k: v for k, v in config_to_dict(config).items() if k not in _NOT_IN_PIXELS},
            "teacher_sha256": stats.teacher_sha256,
            "device": device.type,
            "world": world,
        }
        parts = _Parts(Path(config.out) / _PARTIAL / f"rank{rank:03d}-of-{world:03d}", stamp)
    start = time.perf_counter()
    with _dist.cudnn_autotune(device):
        result = synthesize_images(
            teacher,
            stats,
            config,
            image_size=stats.image_size,
            class_names=stats.class_names,
            device=device,
            progress=config.progress,
            parts=parts,
        )
    seconds = time.perf_counter() - start
    raw = result
    if config.image_format == "jpeg":
        # Relabel and the students see the images as published, JPEG artefacts included.
        result = dataclasses.replace(result, images=jpeg_roundtrip(result.images, config.jpeg_quality))
    if config.out:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(
            out / artifacts.images_shard(rank, world),
            images=result.images,
            labels=result.labels,
            indices=result.indices,
            class_names=json.dumps(list(result.class_names)),
        )
        if config.write_imagefolder:
            # Encoded once from the optimized pixels: the files decode to exactly the stored images.
            save_imagefolder(
                raw,
                out / artifacts.IMAGEFOLDER,
                image_format=config.image_format,
                jpeg_quality=config.jpeg_quality,
            )
        if rank == 0:
            record = {
                "config": config_to_dict(config),
                "teacher_sha256": stats.teacher_sha256,
                "class_names": list(stats.class_names),
                "image_size": stats.image_size,
                "world_size": world,
                "images_rank0": len(result.labels),
                "seconds_rank0": round(seconds, 3),
            }
            artifacts.write_record(out, "synthesize", record)
        if parts is not None:
            parts.remove()  # this rank's images are in its images file now
    _dist.barrier()  # every rank's shard and rank 0's record exist before any rank reads them
    return result
