"""The typed, frozen records of the pipeline stages' configuration.

Every stage has one frozen keyword-only dataclass (:class:`SqueezeConfig`, :class:`SynthesisConfig`,
:class:`RelabelStageConfig`, :class:`TrainConfig`) built from shared parts (:class:`DataConfig`,
:class:`TeacherConfig`); :class:`RunConfig` holds one of each. Each validates itself on
construction. Parsing (layers, overrides, coercion) is in :mod:`lpld_pipeline.config.parse`, the
named recipes in :mod:`lpld_pipeline.config.presets`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from lpld_pipeline.errors import ConfigError

__all__ = [
    "DataConfig",
    "RelabelStageConfig",
    "RunConfig",
    "SqueezeConfig",
    "SynthesisConfig",
    "TeacherConfig",
    "TrainConfig",
]


def require(ok: bool, what: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"Expected {what}. Got {got!r} instead.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The real training data: the built-in ``digits`` set or an ImageFolder tree.

    ``root`` (ImageFolder only) is a directory holding ``train/`` (ImageNet-1K, Tiny-ImageNet and
    ImageNet-21K-P layouts) or the class folders themselves. Images are served as float tensors in
    [0, 1]; normalization belongs to the teacher.

    ``augment`` draws training views (random-resized crop with ``crop_scale``, and a horizontal
    flip where it preserves labels) while collecting statistics, as the reference squeeze does.
    ``hflip`` says whether a horizontal flip preserves the labels; None takes the dataset's own
    answer (:attr:`flip_preserves_labels`: not for digits, yes for ImageFolder photos), which the
    synthesis and relabel stages also follow. ``eval_transform`` is how an ImageFolder is prepared
    without augmentation (validation, un-augmented statistics): ``resize_center_crop`` (resize to
    ``image_size * 256 / 224``, centre crop; ImageNet-1K), ``resize`` (to ``image_size`` squared;
    ImageNet-21K) or ``none`` (images used as they are, which must be ``image_size`` squared;
    Tiny-ImageNet).
    """

    name: Literal["digits", "imagefolder"] = "digits"
    root: str = ""
    image_size: int = 32
    augment: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool | None = None
    eval_transform: Literal["resize_center_crop", "resize", "none"] = "resize_center_crop"
    batch_size: int = 256
    num_workers: int = 0

    @property
    def flip_preserves_labels(self) -> bool:
        """Whether a horizontal flip keeps an image's label (a mirrored digit is not a digit)."""
        return self.hflip if self.hflip is not None else self.name != "digits"

    def __post_init__(self) -> None:
        require(self.name in ("digits", "imagefolder"), "data.name 'digits' or 'imagefolder'", self.name)
        lo, hi = self.crop_scale
        require(0 < lo <= hi <= 1, "data.crop_scale (lo, hi) with 0 < lo <= hi <= 1", self.crop_scale)
        require(self.image_size >= 8, "data.image_size >= 8", self.image_size)
        require(self.batch_size >= 1, "data.batch_size >= 1", self.batch_size)
        require(self.num_workers >= 0, "data.num_workers >= 0", self.num_workers)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """Which teacher, with which weights and input normalization.

    ``arch`` is ``tiny_resnet`` (built in, for small images) or any torchvision classification
    model name. ``weights`` is ``train`` (train on the spot on the configured data), ``random``,
    ``pretrained`` (torchvision's default weights; needs a network or a warm cache) or a path to a
    checkpoint. ``small_stem`` swaps a ResNet's 7x7/2 stem and max-pool for a 3x3/1 convolution
    (Tiny-ImageNet, small images). ``normalization`` names the mean/std the teacher expects
    (``data`` computes it from the training images). The ``train_*`` fields apply to ``train``;
    ``train_augment`` trains on the views that relabel takes (random-resized crop with the data's
    ``crop_scale``, flip where it preserves labels, through lpldstore's kernels) instead of the
    plain images, so that the teacher knows the inputs it will label.
    """

    arch: str = "tiny_resnet"
    weights: str = "train"
    small_stem: bool = False
    normalization: Literal["imagenet", "tiny_imagenet", "none", "data"] = "imagenet"
    width: int = 16
    train_epochs: int = 12
    train_lr: float = 0.05
    train_batch_size: int = 64
    train_augment: bool = False

    def __post_init__(self) -> None:
        require(bool(self.arch), "a non-empty teacher.arch", self.arch)
        require(
            self.normalization in ("imagenet", "tiny_imagenet", "none", "data"),
            "teacher.normalization one of 'imagenet', 'tiny_imagenet', 'none', 'data'",
            self.normalization,
        )
        require(self.width >= 1, "teacher.width >= 1", self.width)
        require(self.train_epochs >= 0, "teacher.train_epochs >= 0", self.train_epochs)
        require(self.train_lr > 0, "teacher.train_lr > 0", self.train_lr)
        require(self.train_batch_size >= 1, "teacher.train_batch_size >= 1", self.train_batch_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SqueezeConfig:
    """Stage 1: teacher and class-wise BN statistics, written to ``out``.

    ``class_stats`` ``exact`` gives each class's exact moments over all its (augmented) images;
    ``ema`` computes them as the official ``ClassAwareBatchNorm2d`` does: per batch, each present
    class's mean and biased variance over its samples, folded into a running average with
    ``ema_momentum`` (0.1), starting from mean 0 and variance 1.
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    class_stats: Literal["exact", "ema"] = "exact"
    ema_momentum: float = 0.1
    out: str = ""
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.class_stats in ("exact", "ema"), "class_stats 'exact' or 'ema'", self.class_stats)
        require(0 < self.ema_momentum <= 1, "ema_momentum in (0, 1]", self.ema_momentum)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthesisConfig:
    """Stage 2: LPLD class-wise recover from a squeeze output directory.

    ``mode`` is ``class`` (LPLD: class batches matched to that class's statistics), ``class_global``
    (the "+C" ablation: class batches, global running statistics) or ``mixed`` (SRe2L/CDA: batches
    across classes, global statistics). A group is the set of images that share one augmentation
    draw and one set of BN moments: ``group_size`` images of one class (0 means IPC), or in mixed
    mode ``group_size`` images of consecutive classes. ``groups_per_batch`` groups are optimized
    together in one batch, which gives the same images as one group at a time (the reference) but
    fills a GPU. ``amp`` is ``none`` (float32) or ``bf16`` (autocast, on the CPU too);
    ``channels_last`` and ``compile`` are GPU speed-ups.

    Each iteration draws a random-resized crop, a flip (``flip``; None: where the squeeze data's
    flips preserve labels) and a cyclic shift by ``[0, jitter]`` pixels (``jitter_range``
    ``positive``, the ImageNet recipes) or ``[-jitter, jitter]`` (``symmetric``, the Tiny-ImageNet
    code). ``image_format`` ``jpeg`` saves the images as JPEG of ``jpeg_quality`` (75, as the
    released sets are) and passes the decoded JPEG pixels on to relabel, so that the labels are
    those of the images as published; ``png`` keeps them exactly.
    """

    squeeze_dir: str = ""
    out: str = ""
    ipc: int = 10
    iterations: int = 4000
    lr: float = 0.25
    betas: tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-8
    r_bn: float = 0.01
    first_bn_multiplier: float = 10.0
    jitter: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool | None = None
    jitter_range: Literal["positive", "symmetric"] = "positive"
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = 75
    mode: Literal["class", "class_global", "mixed"] = "class"
    group_size: int = 0
    groups_per_batch: int = 1
    classes: tuple[int, ...] = ()
    seed: int = 0
    device: str = "auto"
    amp: Literal["none", "bf16"] = "none"
    channels_last: bool = False
    compile: bool = False
    progress: bool = True
    write_imagefolder: bool = True

    def __post_init__(self) -> None:
        require(self.ipc >= 1, "ipc >= 1", self.ipc)
        require(self.iterations >= 1, "iterations >= 1", self.iterations)
        require(self.lr > 0 and math.isfinite(self.lr), "a finite lr > 0", self.lr)
        require(all(0 <= b < 1 for b in self.betas), "betas in [0, 1)", self.betas)
        require(self.r_bn >= 0, "r_bn >= 0", self.r_bn)
        require(self.jitter >= 0, "jitter >= 0", self.jitter)
        lo, hi = self.crop_scale
        require(0 < lo <= hi <= 1, "crop_scale (lo, hi) with 0 < lo <= hi <= 1", self.crop_scale)
        rlo, rhi = self.crop_ratio
        require(0 < rlo <= rhi, "crop_ratio (lo, hi) with 0 < lo <= hi", self.crop_ratio)
        require(
            self.mode in ("class", "class_global", "mixed"),
            "mode one of 'class', 'class_global', 'mixed'",
            self.mode,
        )
        require(self.group_size >= 0, "group_size >= 0 (0 means IPC)", self.group_size)
        require(self.groups_per_batch >= 1, "groups_per_batch >= 1", self.groups_per_batch)
        require(all(c >= 0 for c in self.classes), "non-negative class indices", self.classes)
        require(self.amp in ("none", "bf16"), "amp 'none' or 'bf16'", self.amp)
        require(1 <= self.jpeg_quality <= 95, "jpeg_quality in [1, 95]", self.jpeg_quality)
        require(
            self.jitter_range in ("positive", "symmetric"),
            "jitter_range 'positive' or 'symmetric'",
            self.jitter_range,
        )
        require(self.image_format in ("png", "jpeg"), "image_format 'png' or 'jpeg'", self.image_format)

    @property
    def effective_group_size(self) -> int:
        return self.group_size or self.ipc


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelabelStageConfig:
    """Stage 3: the teacher's soft labels for the kept entries of a pruning plan, into a store.

    The images are ``synth_dir``'s ``images*.npz`` (``lpld synthesize``'s output) or, instead, the
    ImageFolder at ``image_folder`` (class folders of JPEG/PNG files, e.g. a released distilled
    set); ``image_size`` 0 requires its images to share one size, N resizes and centre-crops them
    to N x N (:mod:`lpld_pipeline.imagefolder`). The teacher is ``teacher`` if set, else
    ``squeeze_dir``'s ``teacher.pt``: an ``lpld-teacher`` checkpoint, a TorchScript file, or a
    plain state dict of the model ``teacher_arch`` names (a torchvision model, or ``timm:NAME``),
    whose input normalization is ``mean``/``std`` (None: ImageNet's; an lpld-teacher checkpoint
    records its own). The plan is ``epochs`` augmentation epochs of ``batch_size`` images, pruned to
    ``1/ratio`` by ``strategy`` (``prefix``, ``random``, ``epoch``); only its kept entries are ever
    computed. ``sampler`` ``sre2l`` draws the batches as SRe2L's relabel script does (torch's
    ``RandomSampler`` seeded ``plan_seed``, 42 there), so that ``lpldstore export --to sre2l`` of the
    store is exact; ``last_batch`` None is ``drop`` for the ``lpldstore`` sampler and ``pad`` (SRe2L's
    ``drop_last=False``) for ``sre2l``. ``output_size`` 0 means the image size. ``mix`` is ``cutmix``
    or ``none``; ``cutout`` adds the ImageNet-21K recipe's random-colour rectangle after the crop
    (``lpldstore.RelabelConfig(extras=("cutout",))``: the store keeps its boxes and colours, and
    the pool loader replays them).
    ``codec`` / ``codec_params`` name the logits codec (``lpldstore.CodecConfig``). ``flip_prob``
    None flips half the images where the squeeze data's flips preserve labels and none elsewhere.
    ``amp`` is ``auto`` (bf16 autocast on a GPU, float32 on the CPU), ``none`` (float32), ``bf16``
    or ``fp16`` (that autocast on any device). An existing store at ``out`` made with the same
    settings and teacher is continued (``resume``); a different one is refused.
    """

    squeeze_dir: str = ""
    synth_dir: str = ""
    image_folder: str = ""
    image_size: int = 0
    teacher: str = ""
    teacher_arch: str = ""
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    out: str = ""
    batch_size: int = 128
    epochs: int = 300
    ratio: float = 40.0
    strategy: Literal["prefix", "random", "epoch"] = "prefix"
    plan_seed: int = 42
    sampler: Literal["lpldstore", "sre2l"] = "lpldstore"
    last_batch: Literal["drop", "pad"] | None = None
    output_size: int = 0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float | None = None
    mix: Literal["cutmix", "none"] = "cutmix"
    mix_alpha: float = 1.0
    cutout: bool = False
    aug_seed: int = 0
    codec: str = "float16"
    codec_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    block_entries: int = 64
    device: str = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "batch_size >= 1", self.batch_size)
        require(self.epochs >= 1, "epochs >= 1", self.epochs)
        require(self.ratio >= 1 and math.isfinite(self.ratio), "a finite ratio >= 1", self.ratio)
        require(self.output_size >= 0, "output_size >= 0 (0 means the image size)", self.output_size)
        require(self.image_size >= 0, "image_size >= 0 (0: the images' own size)", self.image_size)
        require(
            not (self.synth_dir and self.image_folder),
            "synth_dir or image_folder, not both (they are two sources of images)",
            (self.synth_dir, self.image_folder),
        )
        require(self.sampler in ("lpldstore", "sre2l"), "sampler 'lpldstore' or 'sre2l'", self.sampler)
        for name, value in (("mean", self.mean), ("std", self.std)):
            require(value is None or len(value) == 3, f"{name} as three numbers (R, G, B) or null", value)
        require(self.std is None or min(self.std) > 0, "std values > 0", self.std)
        require(
            self.flip_prob is None or 0 <= self.flip_prob <= 1, "flip_prob in [0, 1] or null", self.flip_prob
        )
        require(self.block_entries >= 1, "block_entries >= 1", self.block_entries)

    @property
    def effective_last_batch(self) -> Literal["drop", "pad"]:
        """``last_batch``, or the sampler's own choice when it is None."""
        if self.last_batch is not None:
            return self.last_batch
        return "pad" if self.sampler == "sre2l" else "drop"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Stage 4: a student trained from a store with the pool loader (reference/method.md 1.4).

    ``model`` is ``tiny_resnet`` or any torchvision classification model; ``small_stem`` gives a
    ResNet the 3x3/1 stem without max-pool (Tiny-ImageNet). The loss is
    ``KL(softmax(t/T) || softmax(s/T))`` (batch mean) times ``T**2`` if ``t2``; ``logit_smoothing``
    ``s`` replaces the stored logits ``z`` by ``(1 - s) z + s / C`` (the ImageNet-21K recipe's 0.2).
    ``optimizer`` ``adamw`` or ``sgd``, both with weight decay on conv/linear weights only, as the
    reference's ``get_parameters`` (``decay_norm_and_bias`` decays BN and bias parameters too);
    ``schedule`` ``cosine`` (per epoch, ``0.5 (1 + cos(pi e / E))``) or ``warmup_cosine`` (linear
    warm-up from 0.01x over ``warmup_epochs``, then cosine). ``policy`` is the pool loader's
    (``ilp``, ``epoch``, ``order``, ``stored``, ``sequential``); ``batch_size`` 0 trains on one stored batch per
    step. Validation uses ``val`` (its image size is set to the store's output size; its
    ``eval_transform`` is the recipe's evaluation transform).
    """

    store: str = ""
    out: str = ""
    model: str = "resnet18"
    small_stem: bool = False
    width: int = 16
    epochs: int = 300
    batch_size: int = 0
    temperature: float = 20.0
    t2: bool = False
    logit_smoothing: float = 0.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    decay_norm_and_bias: bool = False
    momentum: float = 0.9
    schedule: Literal["cosine", "warmup_cosine"] = "cosine"
    warmup_epochs: int = 0
    policy: Literal["ilp", "epoch", "order", "stored", "sequential"] = "ilp"
    loader_seed: int = 0
    num_workers: int = 0
    device_loader: bool = True
    val: DataConfig = dataclasses.field(default_factory=DataConfig)
    val_interval: int = 10
    checkpoint_every_steps: int = 0
    seed: int = 0
    device: str = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs >= 1", self.epochs)
        require(self.batch_size >= 0, "batch_size >= 0 (0: one stored batch per step)", self.batch_size)
        require(self.temperature > 0, "temperature > 0", self.temperature)
        require(0 <= self.logit_smoothing < 1, "logit_smoothing in [0, 1)", self.logit_smoothing)
        require(self.lr > 0 and math.isfinite(self.lr), "a finite lr > 0", self.lr)
        require(self.weight_decay >= 0, "weight_decay >= 0", self.weight_decay)
        require(0 <= self.warmup_epochs < self.epochs, "warmup_epochs in [0, epochs)", self.warmup_epochs)
        require(self.val_interval >= 1, "val_interval >= 1", self.val_interval)
        require(self.checkpoint_every_steps >= 0, "checkpoint_every_steps >= 0", self.checkpoint_every_steps)
        require(self.num_workers >= 0, "num_workers >= 0", self.num_workers)
        require(self.width >= 1, "width >= 1", self.width)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """All four stages from one config. Stage outputs go under ``out`` (``squeeze/``, ``synth/``,
    ``labels.zarr``, ``train/``); the stages' own ``out``/input paths are filled in from it. A
    stage whose output already records the same config is skipped, so a run can be resumed.
    ``threads`` sets torch's CPU threads for the run (0: torch's default); the demo's tiny
    convolutions gain little from a second thread and lose much when the cores are shared."""

    out: str = "runs/demo"
    squeeze: SqueezeConfig = dataclasses.field(default_factory=SqueezeConfig)
    synthesize: SynthesisConfig = dataclasses.field(default_factory=SynthesisConfig)
    relabel: RelabelStageConfig = dataclasses.field(default_factory=RelabelStageConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    device: str = "auto"
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.threads >= 0, "threads >= 0 (0: torch's default)", self.threads)
