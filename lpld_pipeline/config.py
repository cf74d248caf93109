"""Typed, layered configuration of the pipeline stages.

Every stage has one frozen keyword-only dataclass (:class:`SqueezeConfig`, :class:`SynthesisConfig`)
built from shared parts (:class:`DataConfig`, :class:`TeacherConfig`). A config is resolved in
layers: a named preset, then an optional JSON (or YAML, if PyYAML is importable) file, then
``key=value`` overrides with dotted keys (``teacher.arch=resnet50``); values are parsed as JSON and
fall back to plain strings. Unknown keys are rejected by name, so a typo fails loudly. The resolved
config is JSON (:func:`config_to_dict`) and is saved beside every output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from lpld_pipeline.errors import ConfigError

__all__ = [
    "RELABEL_PRESETS",
    "RUN_PRESETS",
    "SQUEEZE_PRESETS",
    "SYNTHESIS_PRESETS",
    "TRAIN_PRESETS",
    "DataConfig",
    "RelabelStageConfig",
    "RunConfig",
    "SqueezeConfig",
    "SynthesisConfig",
    "TeacherConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "resolve_config",
]

C = TypeVar("C")


def _require(ok: bool, what: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"Expected {what}. Got {got!r} instead.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The real training data: the built-in ``digits`` set or an ImageFolder tree.

    ``root`` (ImageFolder only) is a directory holding ``train/`` (ImageNet-1K, Tiny-ImageNet and
    ImageNet-21K-P layouts) or the class folders themselves. Images are served as float tensors in
    [0, 1]; normalization belongs to the teacher. ``augment`` applies random-resized-crop and flip
    while collecting statistics, as the reference squeeze does.
    """

    name: Literal["digits", "imagefolder"] = "digits"
    root: str = ""
    image_size: int = 32
    augment: bool = False
    batch_size: int = 256
    num_workers: int = 0

    def __post_init__(self) -> None:
        _require(self.name in ("digits", "imagefolder"), "data.name 'digits' or 'imagefolder'", self.name)
        _require(self.image_size >= 8, "data.image_size >= 8", self.image_size)
        _require(self.batch_size >= 1, "data.batch_size >= 1", self.batch_size)
        _require(self.num_workers >= 0, "data.num_workers >= 0", self.num_workers)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """Which teacher, with which weights and input normalization.

    ``arch`` is ``tiny_resnet`` (built in, for small images) or any torchvision classification
    model name. ``weights`` is ``train`` (train on the spot on the configured data), ``random``,
    ``pretrained`` (torchvision's default weights; needs a network or a warm cache) or a path to a
    checkpoint. ``small_stem`` swaps a ResNet's 7x7/2 stem and max-pool for a 3x3/1 convolution
    (Tiny-ImageNet, small images). ``normalization`` names the mean/std the teacher expects
    (``data`` computes it from the training images). The ``train_*`` fields apply to ``train``.
    """

    arch: str = "tiny_resnet"
    weights: str = "train"
    small_stem: bool = False
    normalization: Literal["imagenet", "tiny_imagenet", "none", "data"] = "imagenet"
    width: int = 16
    train_epochs: int = 12
    train_lr: float = 0.05
    train_batch_size: int = 64

    def __post_init__(self) -> None:
        _require(bool(self.arch), "a non-empty teacher.arch", self.arch)
        _require(
            self.normalization in ("imagenet", "tiny_imagenet", "none", "data"),
            "teacher.normalization one of 'imagenet', 'tiny_imagenet', 'none', 'data'",
            self.normalization,
        )
        _require(self.width >= 1, "teacher.width >= 1", self.width)
        _require(self.train_epochs >= 0, "teacher.train_epochs >= 0", self.train_epochs)
        _require(self.train_lr > 0, "teacher.train_lr > 0", self.train_lr)
        _require(self.train_batch_size >= 1, "teacher.train_batch_size >= 1", self.train_batch_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SqueezeConfig:
    """Stage 1: teacher and exact class-wise BN statistics, written to ``out``."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    out: str = ""
    seed: int = 0
    device: str = "auto"
    progress: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthesisConfig:
    """Stage 2: LPLD class-wise recover from a squeeze output directory.

    ``mode`` is ``class`` (LPLD: class batches matched to that class's statistics), ``class_global``
    (the "+C" ablation: class batches, global running statistics) or ``mixed`` (SRe2L/CDA: batches
    across classes, global statistics). A group is the set of images that share one augmentation
    draw and one set of BN moments: ``group_size`` images of one class (0 means IPC), or in mixed
    mode ``group_size`` images of consecutive classes. ``groups_per_batch`` groups are optimized
    together in one batch, which gives the same images as one group at a time (the reference) but
    fills a GPU. ``amp`` is ``none`` or ``bf16`` (GPU only); ``channels_last`` and ``compile`` are
    GPU speed-ups.
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
    flip: bool = True
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
        _require(self.ipc >= 1, "ipc >= 1", self.ipc)
        _require(self.iterations >= 1, "iterations >= 1", self.iterations)
        _require(self.lr > 0 and math.isfinite(self.lr), "a finite lr > 0", self.lr)
        _require(all(0 <= b < 1 for b in self.betas), "betas in [0, 1)", self.betas)
        _require(self.r_bn >= 0, "r_bn >= 0", self.r_bn)
        _require(self.jitter >= 0, "jitter >= 0", self.jitter)
        lo, hi = self.crop_scale
        _require(0 < lo <= hi <= 1, "crop_scale (lo, hi) with 0 < lo <= hi <= 1", self.crop_scale)
        rlo, rhi = self.crop_ratio
        _require(0 < rlo <= rhi, "crop_ratio (lo, hi) with 0 < lo <= hi", self.crop_ratio)
        _require(
            self.mode in ("class", "class_global", "mixed"),
            "mode one of 'class', 'class_global', 'mixed'",
            self.mode,
        )
        _require(self.group_size >= 0, "group_size >= 0 (0 means IPC)", self.group_size)
        _require(self.groups_per_batch >= 1, "groups_per_batch >= 1", self.groups_per_batch)
        _require(all(c >= 0 for c in self.classes), "non-negative class indices", self.classes)
        _require(self.amp in ("none", "bf16"), "amp 'none' or 'bf16'", self.amp)

    @property
    def effective_group_size(self) -> int:
        return self.group_size or self.ipc


# Presets follow reference/method.md (sections 1.1-1.2); ImageFolder roots and local checkpoints
# must be given by file or override. ``demo`` runs on a CPU in about a minute.
SQUEEZE_PRESETS: dict[str, SqueezeConfig] = {
    "demo": SqueezeConfig(
        data=DataConfig(name="digits", image_size=32),
        teacher=TeacherConfig(arch="tiny_resnet", weights="train", normalization="data"),
    ),
    "imagenet1k": SqueezeConfig(
        data=DataConfig(name="imagefolder", image_size=224, augment=True, batch_size=256, num_workers=8),
        teacher=TeacherConfig(arch="resnet18", weights="pretrained", normalization="imagenet"),
    ),
    "tiny": SqueezeConfig(
        data=DataConfig(name="imagefolder", image_size=64, augment=True, batch_size=256, num_workers=8),
        teacher=TeacherConfig(arch="resnet18", weights="", small_stem=True, normalization="tiny_imagenet"),
    ),
    "imagenet21k": SqueezeConfig(
        data=DataConfig(name="imagefolder", image_size=224, augment=True, batch_size=256, num_workers=8),
        teacher=TeacherConfig(arch="resnet18", weights="", normalization="none"),
    ),
}

SYNTHESIS_PRESETS: dict[str, SynthesisConfig] = {
    "demo": SynthesisConfig(
        ipc=10, iterations=200, lr=0.1, r_bn=0.05, jitter=4, crop_scale=(0.5, 1.0), groups_per_batch=10
    ),
    "imagenet1k": SynthesisConfig(
        ipc=10,
        iterations=4000,
        lr=0.25,
        r_bn=0.01,
        jitter=32,
        groups_per_batch=50,
        amp="bf16",
        channels_last=True,
        write_imagefolder=True,
    ),
    "tiny": SynthesisConfig(
        ipc=50, iterations=4000, lr=0.1, r_bn=0.05, jitter=4, group_size=100, groups_per_batch=20
    ),
    "imagenet21k": SynthesisConfig(
        ipc=10,
        iterations=2000,
        lr=0.05,
        r_bn=0.25,
        jitter=32,
        groups_per_batch=50,
        amp="bf16",
        channels_last=True,
    ),
}


# --- dict <-> dataclass -----------------------------------------------------------------------


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return config_from_dict(tp, value, prefix=f"{key}.")
    if origin is Literal:
        _require(value in typing.get_args(tp), f"{key} one of {list(typing.get_args(tp))}", value)
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"Expected {key} of type {tp}. Got {value!r} instead.")
    if origin is tuple:
        args = typing.get_args(tp)
        _require(isinstance(value, Sequence) and not isinstance(value, str), f"{key} as a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        _require(len(value) == len(args), f"{key} as a list of {len(args)} values", value)
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if origin in (dict, Mapping):
        _require(isinstance(value, Mapping), f"{key} a JSON object", value)
        return dict(value)
    if tp is type(None):
        _require(value is None, f"{key} null", value)
        return None
    if tp is bool:
        _require(isinstance(value, bool), f"{key} true or false", value)
        return value
    if tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), f"{key} an integer", value)
        return value
    if tp is float:
        _require(isinstance(value, int | float) and not isinstance(value, bool), f"{key} a number", value)
        return float(value)
    if tp is str:
        _require(isinstance(value, str), f"{key} a string", value)
        return value
    raise ConfigError(f"Cannot parse {key}: unsupported field type {tp}.")  # pragma: no cover


def config_from_dict(cls: type[C], data: Any, *, prefix: str = "") -> C:
    """Build ``cls`` from a (possibly partial) dict; unknown keys are rejected by name."""
    name = cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"Expected a JSON object for {prefix or name}. Got {type(data).__name__} instead.")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"Unknown key(s) {[prefix + k for k in unknown]} for {name}; expected only "
            f"{sorted(prefix + k for k in fields)}. Check for a typo."
        )
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - every field has a default
        raise ConfigError(f"Invalid {name}: {exc}") from exc


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_file(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Expected a config file at {str(path)!r}. Got no such file instead.")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ConfigError(
                f"Config file {str(path)!r} is YAML but PyYAML is not installed; "
                "install pyyaml or write the config as JSON."
            ) from exc
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Config file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"Expected a JSON object in {str(path)!r}. Got {type(data).__name__} instead.")
    return data


def _parse_override(item: str) -> dict[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Expected an override of the form key=value (e.g. ipc=50). Got {item!r} instead.")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # plain strings need no JSON quotes: teacher.arch=resnet50
    nested: dict[str, Any] = {}
    cursor = nested
    *parents, leaf = key.strip().split(".")
    for p in parents:
        cursor = cursor.setdefault(p, {})
    cursor[leaf] = value
    return nested


def resolve_config(
    cls: type[C],
    presets: Mapping[str, C],
    *,
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> C:
    """Resolve ``cls`` from preset, then file, then ``key=value`` overrides (last wins)."""
    if preset is None:
        layered: dict[str, Any] = config_to_dict(cls())
    elif preset in presets:
        layered = config_to_dict(presets[preset])
    else:
        raise ConfigError(f"Expected a preset in {sorted(presets)}. Got {preset!r} instead.")
    if file is not None:
        layered = _merge(layered, _read_file(Path(file)))
    for item in overrides:
        layered = _merge(layered, _parse_override(item))
    return config_from_dict(cls, layered)


# --- part 2: relabel, train, run -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelabelStageConfig:
    """Stage 3: the teacher's soft labels for the kept entries of a pruning plan, into a store.

    The teacher is ``squeeze_dir``'s ``teacher.pt``; the images are ``synth_dir``'s
    ``images.npz``. The plan is ``epochs`` augmentation epochs of ``batch_size`` images, pruned to
    ``1/ratio`` by ``strategy`` (``prefix``, ``random``, ``epoch``); only its kept entries are ever
    computed. ``output_size`` 0 means the image size. ``mix`` is ``cutmix`` or ``none`` (store
    format 1 has no cutout arrays, so the ImageNet-21K recipe's cutout is not offered). ``codec`` / ``codec_params`` name the logits
    codec (``lpldstore.CodecConfig``). ``amp`` is ``auto`` (bf16 autocast on GPU, float32 on CPU),
    ``none``, ``bf16`` or ``fp16``. An existing store at ``out`` made with the same settings and
    teacher is continued (``resume``); a different one is refused.
    """

    squeeze_dir: str = ""
    synth_dir: str = ""
    out: str = ""
    batch_size: int = 128
    epochs: int = 300
    ratio: float = 40.0
    strategy: Literal["prefix", "random", "epoch"] = "prefix"
    plan_seed: int = 42
    last_batch: Literal["drop", "pad"] = "drop"
    output_size: int = 0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    mix: Literal["cutmix", "none"] = "cutmix"
    mix_alpha: float = 1.0
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
        _require(self.batch_size >= 1, "batch_size >= 1", self.batch_size)
        _require(self.epochs >= 1, "epochs >= 1", self.epochs)
        _require(self.ratio >= 1 and math.isfinite(self.ratio), "a finite ratio >= 1", self.ratio)
        _require(self.output_size >= 0, "output_size >= 0 (0 means the image size)", self.output_size)
        _require(0 <= self.flip_prob <= 1, "flip_prob in [0, 1]", self.flip_prob)
        _require(self.block_entries >= 1, "block_entries >= 1", self.block_entries)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Stage 4: a student trained from a store with the pool loader (reference/method.md 1.4).

    ``model`` is ``tiny_resnet`` or any torchvision classification model; ``small_stem`` gives a
    ResNet the 3x3/1 stem without max-pool (Tiny-ImageNet). The loss is
    ``KL(softmax(t/T) || softmax(s/T))`` (batch mean) times ``T**2`` if ``t2``; ``logit_smoothing``
    ``s`` replaces the stored logits ``z`` by ``(1 - s) z + s / C`` (the ImageNet-21K recipe's 0.2).
    ``optimizer`` ``adamw`` (weight decay on conv/linear weights only) or ``sgd``; ``schedule``
    ``cosine`` (per epoch, ``0.5 (1 + cos(pi e / E))``) or ``warmup_cosine`` (linear warm-up from
    0.01x over ``warmup_epochs``, then cosine). ``policy`` is the pool loader's (``ilp``,
    ``epoch``, ``sequential``); ``batch_size`` 0 trains on one stored batch per step.
    Validation uses ``val`` (its image size is set to the store's output size).
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
    momentum: float = 0.9
    schedule: Literal["cosine", "warmup_cosine"] = "cosine"
    warmup_epochs: int = 0
    policy: Literal["ilp", "epoch", "sequential"] = "ilp"
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
        _require(self.epochs >= 1, "epochs >= 1", self.epochs)
        _require(self.batch_size >= 0, "batch_size >= 0 (0: one stored batch per step)", self.batch_size)
        _require(self.temperature > 0, "temperature > 0", self.temperature)
        _require(0 <= self.logit_smoothing < 1, "logit_smoothing in [0, 1)", self.logit_smoothing)
        _require(self.lr > 0 and math.isfinite(self.lr), "a finite lr > 0", self.lr)
        _require(self.weight_decay >= 0, "weight_decay >= 0", self.weight_decay)
        _require(0 <= self.warmup_epochs < self.epochs, "warmup_epochs in [0, epochs)", self.warmup_epochs)
        _require(self.val_interval >= 1, "val_interval >= 1", self.val_interval)
        _require(self.checkpoint_every_steps >= 0, "checkpoint_every_steps >= 0", self.checkpoint_every_steps)
        _require(self.num_workers >= 0, "num_workers >= 0", self.num_workers)
        _require(self.width >= 1, "width >= 1", self.width)


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
        _require(self.threads >= 0, "threads >= 0 (0: torch's default)", self.threads)


# Relabel and training recipes of reference/method.md 1.3-1.4. ``demo``: digits, IPC 10, 10x.
RELABEL_PRESETS: dict[str, RelabelStageConfig] = {
    "demo": RelabelStageConfig(batch_size=10, epochs=200, ratio=10, mix="cutmix", plan_seed=42),
    "imagenet1k": RelabelStageConfig(batch_size=128, epochs=300, ratio=40, mix="cutmix"),
    "tiny": RelabelStageConfig(batch_size=64, epochs=100, ratio=40, mix="none"),
    "imagenet21k": RelabelStageConfig(batch_size=32, epochs=300, ratio=40, mix="none"),
}

TRAIN_PRESETS: dict[str, TrainConfig] = {
    "demo": TrainConfig(
        model="tiny_resnet",
        width=16,
        epochs=200,
        temperature=4.0,
        t2=True,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.01,
        val=DataConfig(name="digits"),
        val_interval=50,
    ),
    "imagenet1k": TrainConfig(
        model="resnet18",
        epochs=300,
        batch_size=128,
        temperature=20.0,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.01,
        schedule="cosine",
        val=DataConfig(name="imagefolder", image_size=224, num_workers=8),
        num_workers=8,
        device_loader=False,
    ),
    "tiny": TrainConfig(
        model="resnet18",
        small_stem=True,
        epochs=100,
        batch_size=64,
        temperature=20.0,
        t2=True,
        optimizer="sgd",
        lr=0.2,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="warmup_cosine",
        warmup_epochs=5,
        val=DataConfig(name="imagefolder", image_size=64, num_workers=8),
    ),
    "imagenet21k": TrainConfig(
        model="resnet18",
        epochs=300,
        batch_size=32,
        temperature=20.0,
        logit_smoothing=0.2,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.01,
        val=DataConfig(name="imagefolder", image_size=224, num_workers=8),
        val_interval=50,
        num_workers=8,
        device_loader=False,
    ),
}

RUN_PRESETS: dict[str, RunConfig] = {
    name: RunConfig(
        out=f"runs/{name}",
        squeeze=SQUEEZE_PRESETS[name],
        synthesize=SYNTHESIS_PRESETS[name],
        relabel=RELABEL_PRESETS[name],
        train=TRAIN_PRESETS[name],
        threads=1 if name == "demo" else 0,
    )
    for name in ("demo", "imagenet1k", "tiny", "imagenet21k")
}
