"""Squeeze: class-wise BatchNorm statistics of a teacher over real data.

Forward pre-hooks on every BatchNorm layer read the layer's input and add, per class, the sums
and sums of squares over (N, H, W) and the element counts, all in float64; under torchrun the sums
are all-reduced across ranks. By default (``exact``) the means and biased variances follow from
these exact moments. ``ema`` computes them as the reference ``ClassAwareBatchNorm2d`` does
instead: each batch's per-class mean and biased variance, folded into a running average (momentum
0.1) that starts at mean 0 and variance 1. The statistics are collected under the training
augmentation when ``data.augment`` is set (the reference squeeze uses its training transform).

Artifact format (``bnstats.pt``, ``torch.save`` of plain containers, loadable with
``weights_only=True``)::

    format          "lpld-class-bn-stats"
    format_version  1
    meta            JSON str: teacher (TeacherSpec), teacher_sha256, class_names, image_size, dataset,
                    estimator ("exact" or "ema"), flip_preserves_labels (absent in older files: exact, true)
    layers          [BN module names in forward-registration order]
    mean, var       {layer: float32 [num_classes, channels]}  (biased variance; 0 / 1 for empty classes)
    count           {layer: int64 [num_classes]} elements (images x H x W) behind each class's moments
    images_per_class int64 [num_classes]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from lpld_pipeline import _dist, artifacts
from lpld_pipeline.config import SqueezeConfig, config_to_dict
from lpld_pipeline.data import build_dataset, class_names_of
from lpld_pipeline.errors import ArtifactError, ConfigError
from lpld_pipeline.teacher import (
    Teacher,
    TeacherSpec,
    make_teacher,
    save_teacher_checkpoint,
    teacher_accuracy,
)
from lpld_pipeline.views import Views, training_views

__all__ = [
    "BN_TYPES",
    "ClassBNStats",
    "ClassMoments",
    "batchnorm_layers",
    "compute_class_stats",
    "load_class_stats",
    "save_class_stats",
    "squeeze",
]

STATS_FORMAT = "lpld-class-bn-stats"
STATS_FORMAT_VERSION = 1

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BatchNorm module of ``model`` with its name, in registration order."""
    layers: list[tuple[str, nn.Module]] = [
        (n, m) for n, m in model.named_modules() if isinstance(m, BN_TYPES)
    ]
    if not layers:
        raise ConfigError(
            f"Expected a teacher with BatchNorm layers. Got {type(model).__name__} without any."
        )
    return layers


class ClassMoments:
    """Per-class float64 sums, sums of squares and counts of every BN layer's input.

    Use :meth:`observe` as a context manager around forward passes whose labels it is given;
    outside it the hooks are removed and the model is untouched. With ``estimator="ema"`` it also
    keeps the reference's running averages of per-batch class moments (``momentum``), which
    :meth:`mean_var` then returns.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        device: torch.device,
        *,
        estimator: str = "exact",
        momentum: float = 0.1,
    ) -> None:
        if estimator not in ("exact", "ema"):
            raise ConfigError(f"Expected estimator 'exact' or 'ema'. Got {estimator!r} instead.")
        self.layers = batchnorm_layers(model)
        self.num_classes = num_classes
        self.estimator = estimator
        self.momentum = momentum
        self.ema_mean: dict[str, torch.Tensor] = {}
        self.ema_var: dict[str, torch.Tensor] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.sumsq: dict[str, torch.Tensor] = {}
        self.count: dict[str, torch.Tensor] = {}
        for name, m in self.layers:
            c = int(m.num_features)  # type: ignore[arg-type]
            self.sums[name] = torch.zeros(num_classes, c, dtype=torch.float64, device=device)
            self.sumsq[name] = torch.zeros(num_classes, c, dtype=torch.float64, device=device)
            self.count[name] = torch.zeros(num_classes, dtype=torch.float64, device=device)
            if estimator == "ema":  # the reference buffers' initial values
                self.ema_mean[name] = torch.zeros(num_classes, c, dtype=torch.float64, device=device)
                self.ema_var[name] = torch.ones(num_classes, c, dtype=torch.float64, device=device)
        self.images = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self._labels: torch.Tensor | None = None

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            labels = self._labels
            if labels is None:
                return
            x = inputs[0].detach().to(torch.float64)
            dims = tuple(range(2, x.ndim))
            per_sample = x.sum(dims) if dims else x
            per_sample_sq = (x * x).sum(dims) if dims else x * x
            elements = torch.full_like(labels, x[0, 0].numel(), dtype=torch.float64)
            self.sums[name].index_add_(0, labels, per_sample)
            self.sumsq[name].index_add_(0, labels, per_sample_sq)
            self.count[name].index_add_(0, labels, elements)
            if self.estimator == "ema":
                self._ema_update(name, labels, per_sample, per_sample_sq, elements)

        return hook

    def _ema_update(
        self,
        name: str,
        labels: torch.Tensor,
        per_sample: torch.Tensor,
        per_sample_sq: torch.Tensor,
        elements: torch.Tensor,
    ) -> None:
        # This batch's mean and biased variance of each class present, over its (N_c, H, W).
        k, c = self.num_classes, per_sample.shape[1]
        n = per_sample.new_zeros(k).index_add_(0, labels, elements)
        s = per_sample.new_zeros(k, c).index_add_(0, labels, per_sample)
        q = per_sample.new_zeros(k, c).index_add_(0, labels, per_sample_sq)
        present = n > 0
        mean = s[present] / n[present, None]
        var = (q[present] / n[present, None] - mean * mean).clamp_min(0)
        m = self.momentum
        self.ema_mean[name][present] = (1 - m) * self.ema_mean[name][present] + m * mean
        self.ema_var[name][present] = (1 - m) * self.ema_var[name][present] + m * var

    @contextmanager
    def observe(self, labels: torch.Tensor) -> Iterator[None]:
        """Within this block, BN inputs are added to the moments of ``labels`` (one per sample)."""
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ConfigError(
                f"Expected labels in [0, {self.num_classes}). Got [{int(labels.min())}, {int(labels.max())}]."
            )
        handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in self.layers]
        self._labels = labels
        try:
            yield
            self.images.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        finally:
            self._labels = None
            for h in handles:
                h.remove()

    def all_reduce(self) -> None:
        """Sum the moments over torchrun ranks (no-op in one process)."""
        if self.estimator == "ema" and _dist.rank_and_world()[1] > 1:
            raise ConfigError(
                "Expected one process for class_stats='ema': a running average over batches has no sum over "
                "ranks (the reference keeps rank 0's). Run squeeze without torchrun, or use class_stats='exact'."
            )
        for name, _ in self.layers:
            _dist.all_reduce_sum(self.sums[name])
            _dist.all_reduce_sum(self.sumsq[name])
            _dist.all_reduce_sum(self.count[name])
        _dist.all_reduce_sum(self.images)

    def mean_var(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-class mean and biased variance in float64; 0 and 1 where a class has no data."""
        if self.estimator == "ema":
            return {k: v.clone() for k, v in self.ema_mean.items()}, {
                k: v.clone() for k, v in self.ema_var.items()
            }
        means, variances = {}, {}
        for name, _ in self.layers:
            n = self.count[name].clamp_min(1)[:, None]
            mean = self.sums[name] / n
            var = (self.sumsq[name] / n - mean * mean).clamp_min(0)
            empty = self.count[name] == 0
            mean[empty], var[empty] = 0.0, 1.0
            means[name], variances[name] = mean, var
        return means, variances


@dataclasses.dataclass(frozen=True)
class ClassBNStats:
    """Class-wise BN statistics of one teacher (see the module docstring for the file format)."""

    layers: tuple[str, ...]
    mean: dict[str, torch.Tensor]
    var: dict[str, torch.Tensor]
    count: dict[str, torch.Tensor]
    images_per_class: torch.Tensor
    class_names: tuple[str, ...]
    teacher: TeacherSpec
    teacher_sha256: str
    image_size: int
    dataset: str = ""
    estimator: str = "exact"
    flip_preserves_labels: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check_teacher(self, teacher: Teacher) -> None:
        got = teacher.sha256()
        if got != self.teacher_sha256:
            raise ArtifactError(
                f"Expected the teacher these statistics were computed with (sha256 {self.teacher_sha256[:12]}…). "
                f"Got a teacher with sha256 {got[:12]}…; rerun squeeze with this teacher."
            )


def save_class_stats(stats: ClassBNStats, path: str | Path) -> None:
    meta = {
        "teacher": json.loads(stats.teacher.to_json()),
        "teacher_sha256": stats.teacher_sha256,
        "class_names": list(stats.class_names),
        "image_size": stats.image_size,
        "dataset": stats.dataset,
        "estimator": stats.estimator,
        "flip_preserves_labels": stats.flip_preserves_labels,
    }
    torch.save(
        {
            "format": STATS_FORMAT,
            "format_version": STATS_FORMAT_VERSION,
            "meta": json.dumps(meta, sort_keys=True),
            "layers": list(stats.layers),
            "mean": {k: v.detach().cpu().float() for k, v in stats.mean.items()},
            "var": {k: v.detach().cpu().float() for k, v in stats.var.items()},
            "count": {k: v.detach().cpu().long() for k, v in stats.count.items()},
            "images_per_class": stats.images_per_class.detach().cpu().long(),
        },
        path,
    )


def load_class_stats(path: str | Path) -> ClassBNStats:
    """Read ``bnstats.pt`` (or the ``bnstats.pt`` inside a squeeze output directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / artifacts.CLASS_STATS
    if not path.is_file():
        raise ArtifactError(
            f"Expected class statistics at {str(path)!r}. Got no such file; run `lpld squeeze`."
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"Cannot read class statistics {str(path)!r}: {exc}") from exc
    if not (isinstance(blob, dict) and blob.get("format") == STATS_FORMAT):
        raise ArtifactError(f"Expected an {STATS_FORMAT!r} file at {str(path)!r}. Got another file.")
    if blob.get("format_version") != STATS_FORMAT_VERSION:
        raise ArtifactError(
            f"Expected class-statistics format version {STATS_FORMAT_VERSION}. "
            f"Got {blob.get('format_version')!r}; upgrade lpld_pipeline."
        )
    meta = json.loads(blob["meta"])
    return ClassBNStats(
        layers=tuple(blob["layers"]),
        mean=dict(blob["mean"]),
        var=dict(blob["var"]),
        count=dict(blob["count"]),
        images_per_class=blob["images_per_class"],
        class_names=tuple(meta["class_names"]),
        teacher=TeacherSpec.from_json(json.dumps(meta["teacher"])),
        teacher_sha256=meta["teacher_sha256"],
        image_size=int(meta["image_size"]),
        dataset=str(meta.get("dataset", "")),
        estimator=str(meta.get("estimator", "exact")),
        flip_preserves_labels=bool(meta.get("flip_preserves_labels", True)),
    )


@torch.no_grad()
def compute_class_stats(
    teacher: Teacher,
    dataset: Dataset[tuple[torch.Tensor, int]],
    *,
    image_size: int,
    batch_size: int = 256,
    num_workers: int = 0,
    device: torch.device | None = None,
    progress: bool = False,
    dataset_name: str = "",
    estimator: str = "exact",
    momentum: float = 0.1,
    views: Views | None = None,
    flip_preserves_labels: bool = True,
) -> ClassBNStats:
    """Class-wise BN statistics of ``teacher`` (eval mode) over ``dataset`` (see :class:`ClassMoments`).

    ``views`` draws a training view of every batch first (epoch 0, the batch's index). Under
    torchrun each rank reads every ``world``-th sample (no padding, so nothing is counted twice)
    and the moments are all-reduced; every rank returns the same result.
    """
    device = device or torch.device("cpu")
    class_names = class_names_of(dataset)
    rank, world = _dist.rank_and_world()
    shard: Dataset[tuple[torch.Tensor, int]] = (
        Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset  # type: ignore[arg-type]
    )
    loader = DataLoader(
        shard, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    teacher.eval()
    moments = ClassMoments(teacher.model, len(class_names), device, estimator=estimator, momentum=momentum)
    bar = tqdm(loader, desc="squeeze", disable=None if progress and rank == 0 else True, file=sys.stderr)
    for index, (x, y) in enumerate(bar):
        labels = y.to(device, non_blocking=True)
        x = x.to(device, non_blocking=True)
        if views is not None:
            x = views(x, 0, index * world + rank)
        with moments.observe(labels):
            teacher(x)
    moments.all_reduce()
    mean, var = moments.mean_var()
    return ClassBNStats(
        layers=tuple(name for name, _ in moments.layers),
        mean=mean,
        var=var,
        count={k: v.round().long() for k, v in moments.count.items()},
        images_per_class=moments.images.round().long(),
        class_names=class_names,
        teacher=teacher.spec,
        teacher_sha256=teacher.sha256(),
        image_size=image_size,
        dataset=dataset_name,
        estimator=estimator,
        flip_preserves_labels=flip_preserves_labels,
    )


def _broadcast_weights(teacher: Teacher) -> None:
    import torch.distributed as dist

    if _dist.rank_and_world()[1] > 1:
        for t in teacher.model.state_dict().values():
            dist.broadcast(t, src=0)


def squeeze(config: SqueezeConfig) -> ClassBNStats:
    """Run the squeeze stage; with ``config.out`` set, write stats, teacher and config there."""
    device = _dist.resolve_device(config.device)
    _dist.init_from_env(device)
    rank, _ = _dist.rank_and_world()
    data = config.data
    train = build_dataset(data, "train")
    num_classes = len(class_names_of(train))
    # The teacher learns from plain images (an ImageFolder's eval transform), plus relabel's views.
    plain = (
        train if data.name == "digits" or not data.augment else build_dataset(replace(data, augment=False))
    )
    with _dist.cudnn_autotune(device):
        teacher = make_teacher(
            config.teacher,
            num_classes=num_classes,
            train_data=plain,
            seed=config.seed,
            device=device,
            views=training_views(data, config.seed) if config.teacher.train_augment else None,
            progress=config.progress and rank == 0,
        )
        # Trained on the spot on several GPUs, ranks could differ in the last bits: rank 0's weights win.
        _broadcast_weights(teacher)
        stats = compute_class_stats(
            teacher,
            train,
            image_size=config.data.image_size,
            batch_size=config.data.batch_size,
            num_workers=config.data.num_workers,
            device=device,
            progress=config.progress,
            dataset_name=data.name if data.name == "digits" else data.root,
            estimator=config.class_stats,
            momentum=config.ema_momentum,
            # An ImageFolder's training transform augments in the dataset; the digits are augmented here.
            views=training_views(data, config.seed) if data.augment and data.name == "digits" else None,
            flip_preserves_labels=data.flip_preserves_labels,
        )
    if config.out and rank == 0:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        save_class_stats(stats, out / artifacts.CLASS_STATS)
        save_teacher_checkpoint(teacher, out / artifacts.TEACHER)
        record: dict[str, Any] = {"config": config_to_dict(config)}
        record["teacher_sha256"] = stats.teacher_sha256
        record["images_per_class"] = stats.images_per_class.tolist()
        if config.data.name == "digits":
            val = build_dataset(config.data, "val")
            record["teacher_val_accuracy"] = teacher_accuracy(teacher, val, device=device)
        artifacts.write_record(out, "squeeze", record)
    _dist.barrier()  # the other ranks return once rank 0's files are complete, for the next stage
    return stats
