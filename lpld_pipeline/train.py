"""Train: a student from a soft-label store with the pool loader (reference/method.md 1.4).

Each step replays one training batch from the pool (:class:`lpldstore.PoolLoader`: stored crops,
flips and CutMix on the distilled images, normalized with the teacher's mean/std) and minimizes
``KL(softmax(t / T) || softmax(s / T))`` (batch mean, times ``T**2`` where the recipe uses it)
against the decoded stored logits ``t``. No hard-label loss, as in the reference.

The learning rate is a pure function of the epoch (:func:`lr_factor`), the loader's schedule a
pure function of (seed, epoch), so a checkpoint (model, optimizer, loader position, RNG state)
resumes exactly: the weights after resuming equal those of an uninterrupted run.

Checkpoint format (``checkpoint.pt``, ``torch.save``, loadable with ``weights_only=True``)::

    {"format": "lpld-student", "format_version": 1, "config": <TrainConfig as JSON str>,
     "model": state_dict, "optimizer": state_dict, "loader": {"seed", "epoch", "step"},
     "epoch": int, "global_step": int, "rng": uint8 tensor, "best_top1": float, "done": bool}

The step itself is a :class:`DistillationStep` (model, optimizer, learning-rate schedule, gradient
scaler and loss, in the spirit of timm's ``task/distillation.py``); the loop around it only
iterates, evaluates, logs and checkpoints.

``metrics.jsonl`` gets one JSON object per line: ``{"event": "epoch", ...}`` after every epoch
and ``{"event": "eval", ...}`` after every evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

import lpldstore
from lpld_pipeline import _dist, artifacts
from lpld_pipeline._feedback import note
from lpld_pipeline.config import TrainConfig, config_to_dict
from lpld_pipeline.data import build_dataset, class_names_of
from lpld_pipeline.errors import ArtifactError, ConfigError, DataError
from lpld_pipeline.relabel import autocast_dtype
from lpld_pipeline.teacher import TeacherSpec, build_model

__all__ = [
    "DistillationStep",
    "TrainResult",
    "build_student",
    "evaluate",
    "kd_loss",
    "load_student_checkpoint",
    "lr_factor",
    "train",
]

CHECKPOINT_FORMAT = "lpld-student"
CHECKPOINT_FORMAT_VERSION = 1
# Fields that may change between a run and its resumption without changing the result.
_RESUMABLE_CHANGES = frozenset({"out", "resume", "progress", "device", "num_workers", "val"})


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The outcome of a training run (``top1``: after the last epoch; ``best_top1``: best seen)."""

    out: str
    top1: float
    best_top1: float
    epochs: int
    steps: int
    seconds: float


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, *, t2: bool, smoothing: float = 0.0
) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), batch mean, times T**2 if ``t2``.

    ``smoothing`` s replaces the teacher logits z by ``(1 - s) z + s / C`` before the softmax
    (the ImageNet-21K recipe's label smoothing, which acts on the stored logits).
    """
    if smoothing:
        teacher = (1 - smoothing) * teacher + smoothing / teacher.shape[1]
    log_p = F.log_softmax(student.float() / temperature, dim=1)
    log_q = F.log_softmax(teacher.float() / temperature, dim=1)
    loss = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    return loss * temperature**2 if t2 else loss


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """The learning-rate multiplier of ``epoch`` (a pure function: resumes need no scheduler state)."""
    total, warm = config.epochs, config.warmup_epochs
    if config.schedule == "warmup_cosine" and epoch < warm:
        return 0.01 + 0.99 * epoch / warm
    return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(1, total - warm)))


def build_student(config: TrainConfig, num_classes: int) -> nn.Module:
    """The student ``config`` names, initialized from ``config.seed`` (global RNG untouched)."""
    spec = TeacherSpec(
        arch=config.model, num_classes=num_classes, small_stem=config.small_stem, width=config.width
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_model(spec)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # As the reference's get_parameters (for SGD and AdamW alike): decay conv and linear weights,
    # not BN parameters or biases, unless decay_norm_and_bias.
    decay = [
        p for n, p in model.named_parameters() if config.decay_norm_and_bias or ("weight" in n and p.ndim > 1)
    ]
    chosen = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset[tuple[torch.Tensor, int]],
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    batch_size: int = 256,
    amp: str = "auto",
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` ([0, 1] images, normalized here); all ranks agree."""
    rank, world = _dist.rank_and_world()
    shard: Dataset[tuple[torch.Tensor, int]] = (
        Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset  # type: ignore[arg-type]
    )
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    dtype = autocast_dtype(amp, device)
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in DataLoader(shard, batch_size=batch_size, pin_memory=device.type == "cuda"):
        x = (x.to(device, non_blocking=True) - m) / s
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            pred = model(x).argmax(1)
        counts[0] += (pred == y.to(device, non_blocking=True)).sum()
        counts[1] += len(y)
    _dist.all_reduce_sum(counts)
    model.train(was_training)
    return float(counts[0] / counts[1].clamp_min(1))


def _save_atomic(blob: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(blob, tmp)
    os.replace(tmp, path)  # a checkpoint on disk is always a complete one


def load_student_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (``checkpoint.pt`` or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / artifacts.CHECKPOINT
    if not path.is_file():
        raise ArtifactError(f"Expected a training checkpoint at {str(path)!r}. Got no such file.")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"Cannot read training checkpoint {str(path)!r}: {exc}") from exc
    if not (isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT):
        raise ArtifactError(
            f"Expected an {CHECKPOINT_FORMAT!r} checkpoint at {str(path)!r}. Got another file."
        )
    if blob.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ArtifactError(
            f"Expected checkpoint format version {CHECKPOINT_FORMAT_VERSION}. Got {blob.get('format_version')!r}; "
            "upgrade lpld_pipeline."
        )
    return blob


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    now = config_to_dict(config)
    diff = sorted(k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k])
    if diff:
        raise ConfigError(
            f"Expected the checkpoint in {str(path)!r} to come from the same training config to resume. "
            f"Got different {diff} (saved {[saved.get(k) for k in diff]}, now {[now[k] for k in diff]}). "
            "Choose another out, or set resume=false after deleting the directory."
        )


def _val_dataset(config: TrainConfig, store: lpldstore.LabelStore) -> Dataset[tuple[torch.Tensor, int]]:
    if config.val.name == "imagefolder" and not config.val.root:
        raise DataError(
            "Expected val.root to name the real validation ImageFolder (root/val/<class>/... or "
            "root/<class>/...). Got an empty root; pass --val-root /datasets/imagenet or --set val.root=..."
        )
    size = store.relabel.output_size[0]
    val = build_dataset(dataclasses.replace(config.val, image_size=size, augment=False), "val")
    classes = len(class_names_of(val))
    if classes != store.dataset.num_classes:
        raise DataError(
            f"Expected a validation set with the store's {store.dataset.num_classes} classes. Got {classes}; "
            "point val.root at the real validation data of the distilled dataset."
        )
    return val


class DistillationStep:
    """One optimizer step of a student against stored soft labels, holding the state it needs.

    The student ``model`` (and ``net``, the module to call: ``model`` itself or its DDP wrapper),
    the ``optimizer``, the learning-rate schedule (:func:`lr_factor` of ``config``), the gradient
    scaler (active only for fp16 autocast) and the loss settings (temperature, ``T**2``, logit
    smoothing). Calling it on a :class:`lpldstore.PoolBatch` runs forward, loss, backward and the
    optimizer step, and returns the loss and the student's logits.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        device: torch.device,
        *,
        net: nn.Module | None = None,
    ) -> None:
        self.model = model
        self.net = net if net is not None else model
        self.optimizer = optimizer
        self.config = config
        self.device = device
        self.autocast = autocast_dtype(config.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast == torch.float16)

    def set_epoch(self, epoch: int) -> float:
        """Set the learning rate of training epoch ``epoch``; returns it."""
        lr = self.config.lr * lr_factor(self.config, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        c = self.config
        return kd_loss(student, teacher, c.temperature, t2=c.t2, smoothing=c.logit_smoothing)

    def __call__(self, batch: lpldstore.PoolBatch) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch.images.to(self.device, non_blocking=True)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = batch.logits.to(self.device, non_blocking=True)
        dtype = self.autocast
        with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = self.net(x)
        loss = self.loss(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), logits.detach()


@dataclasses.dataclass
class _Progress:
    """Where a training run stands: what a checkpoint saves besides the weights and the optimizer."""

    epoch: int = 0
    global_step: int = 0
    best_top1: float = 0.0
    top1: float = float("nan")


def train(config: TrainConfig, *, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train a student from ``config.store``; checkpoints, metrics and result go to ``config.out``.

    ``on_step(global_step, loss)`` runs after every optimizer step. With ``resume`` and a
    checkpoint in ``out`` from the same config, training continues exactly where it stopped.
    """
    if not config.store:
        raise ConfigError("Expected store (the output of `lpld relabel`) for train. Got an empty string.")
    if not config.out:
        raise ConfigError(
            "Expected out (a directory for checkpoints and metrics) for train. Got an empty string."
        )
    out = Path(config.out)
    device = _dist.resolve_device(config.device)
    _dist.init_from_env(device)
    with lpldstore.open_store(config.store) as store:
        if not store.is_complete:
            raise ArtifactError(
                f"Expected a complete store at {config.store!r}. Got {int(store.committed().sum())} of "
                f"{store.num_entries} entries committed; finish `lpld relabel` (it resumes) first."
            )
        num_classes, mean, std = store.dataset.num_classes, store.dataset.mean, store.dataset.std
        val = _val_dataset(config, store)
    model = build_student(config, num_classes).to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if _dist.rank_and_world()[1] > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    step = DistillationStep(model, _optimizer(model, config), config, device, net=net)
    loader = lpldstore.PoolLoader(
        config.store,
        lpldstore.LoaderConfig(
            policy=config.policy,
            seed=config.loader_seed,
            batch_size=config.batch_size or None,
            num_workers=0 if config.device_loader else config.num_workers,
            device=device if config.device_loader else None,
            labels=True,
        ),
    )
    progress = _Progress()
    ckpt_path = out / artifacts.CHECKPOINT
    rng_state = torch.get_rng_state()
    torch.manual_seed(config.seed)  # dropout and friends; restored on exit
    try:
        if config.resume and ckpt_path.is_file():
            blob = load_student_checkpoint(ckpt_path)
            _check_resumable(json.loads(blob["config"]), config, ckpt_path)
            model.load_state_dict(blob["model"])
            step.optimizer.load_state_dict(blob["optimizer"])
            loader.load_state_dict(blob["loader"])
            torch.set_rng_state(blob["rng"])
            progress = _Progress(
                epoch=int(blob["epoch"]),
                global_step=int(blob["global_step"]),
                best_top1=float(blob["best_top1"]),
                top1=float(blob.get("top1", float("nan"))),
            )
            note(
                f"train: {ckpt_path.parent.name} is complete; nothing to train"
                if blob.get("done")
                else f"train: resuming at step {progress.global_step} (epoch {progress.epoch + 1} of {config.epochs})"
            )
            if blob.get("done"):
                return TrainResult(
                    str(out), progress.top1, progress.best_top1, config.epochs, progress.global_step, 0.0
                )
        elif ckpt_path.exists() and not config.resume:
            raise ConfigError(
                f"Expected no checkpoint in {str(out)!r} with resume=false. Got one; choose another out or "
                "delete it."
            )
        with _dist.cudnn_autotune(device):
            return _loop(step, loader, val, (mean, std), progress, on_step)
    finally:
        torch.set_rng_state(rng_state)
        loader.close()


def _loop(
    step: DistillationStep,
    loader: lpldstore.PoolLoader,
    val: Dataset[tuple[torch.Tensor, int]],
    norm: tuple[tuple[float, ...], tuple[float, ...]],
    progress: _Progress,
    on_step: Callable[[int, float], None] | None,
) -> TrainResult:
    config, device = step.config, step.device
    out = Path(config.out)
    rank, _ = _dist.rank_and_world()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    loader.set_epoch(progress.epoch)
    bar = tqdm(
        total=(config.epochs - progress.epoch) * len(loader),
        desc="train",
        disable=None if config.progress and rank == 0 else True,
        file=sys.stderr,
    )

    def checkpoint(done: bool = False) -> None:
        if rank != 0:
            return
        blob = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "config": json.dumps(config_to_dict(config)),
            "model": {k: v.detach().cpu() for k, v in step.model.state_dict().items()},
            "optimizer": step.optimizer.state_dict(),
            "loader": loader.state_dict(),
            "epoch": progress.epoch,
            "global_step": progress.global_step,
            "rng": torch.get_rng_state(),
            "best_top1": progress.best_top1,
            "top1": progress.top1,
            "done": done,
        }
        _save_atomic(blob, out / artifacts.CHECKPOINT)

    def log(record: dict[str, Any]) -> None:
        if rank == 0:
            with (out / artifacts.METRICS).open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    start = time.perf_counter()
    step.net.train()
    try:
        while progress.epoch < config.epochs:
            epoch = progress.epoch
            lr = step.set_epoch(epoch)
            loader.set_epoch(epoch)
            # Loss x n, samples and steps add up on the host (the loss is read each step anyway);
            # hard-label hits on the device, so that counting them does not wait for the GPU.
            loss_sum, samples_seen, steps_run = 0.0, 0, 0
            correct = torch.zeros((), dtype=torch.float64, device=device)
            t0 = time.perf_counter()
            for batch in loader:
                loss, logits = step(batch)
                progress.global_step += 1
                n = len(batch)
                value = float(loss)
                loss_sum, samples_seen, steps_run = loss_sum + value * n, samples_seen + n, steps_run + 1
                if batch.labels is not None:
                    correct += (logits.argmax(1) == batch.labels.to(device, non_blocking=True)).sum()
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{value:.4f}", refresh=False)
                if (
                    config.checkpoint_every_steps
                    and progress.global_step % config.checkpoint_every_steps == 0
                ):
                    checkpoint()
                if on_step is not None:
                    on_step(progress.global_step, value)
            # On the rank's device: NCCL reduces CUDA tensors only.
            sums = torch.tensor([loss_sum, 0.0, samples_seen, steps_run], dtype=torch.float64, device=device)
            sums[1] = correct
            _dist.all_reduce_sum(sums)
            sums = sums.cpu()
            seconds = time.perf_counter() - t0
            samples = float(sums[2])
            log(
                {
                    "event": "epoch",
                    "epoch": epoch,
                    "global_step": progress.global_step,
                    "lr": lr,
                    "loss": float(sums[0]) / max(1.0, samples),
                    "train_top1_hard": float(sums[1]) / max(1.0, samples),
                    "images": int(samples),
                    "seconds": round(seconds, 4),
                    "images_per_s": samples / seconds if seconds > 0 else None,
                }
            )
            last = epoch + 1 == config.epochs
            if last or (epoch + 1) % config.val_interval == 0:
                progress.top1 = evaluate(
                    step.model, val, mean=norm[0], std=norm[1], device=device, amp=config.amp
                )
                progress.best_top1 = max(progress.best_top1, progress.top1)
                log(
                    {
                        "event": "eval",
                        "epoch": epoch,
                        "global_step": progress.global_step,
                        "top1": progress.top1,
                    }
                )
                step.net.train()
            progress.epoch = epoch + 1
            loader.set_epoch(progress.epoch)  # the checkpoint's loader position: the next epoch's start
            checkpoint(done=last)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    result = TrainResult(
        str(out), progress.top1, progress.best_top1, config.epochs, progress.global_step, seconds
    )
    if rank == 0:
        artifacts.write_record(
            out, "train", {"config": config_to_dict(config), "result": dataclasses.asdict(result)}
        )
    return result
