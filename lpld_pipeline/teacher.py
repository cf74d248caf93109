"""The teacher: a classification model together with the input normalization it expects.

:class:`Teacher` takes images in [0, 1] and normalizes them itself (like timm's
``DistillationTeacher``), so no mean/std literals live elsewhere. A teacher is identified by its
:class:`TeacherSpec` (architecture and normalization) and the SHA-256 of its state dict, which the
class statistics and every later stage record.

Teacher checkpoint format (``torch.save``, loadable with ``weights_only=True``)::

    {"format": "lpld-teacher", "format_version": 1, "spec": <TeacherSpec as JSON str>,
     "state_dict": {name: tensor}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lpld_pipeline.config import TeacherConfig
from lpld_pipeline.errors import ArtifactError, ConfigError, MissingDependencyError
from lpld_pipeline.views import Views

__all__ = [
    "NORMALIZATIONS",
    "Teacher",
    "TeacherSpec",
    "TinyResNet",
    "build_model",
    "load_teacher",
    "load_teacher_checkpoint",
    "make_teacher",
    "save_teacher_checkpoint",
    "state_dict_sha256",
    "teacher_accuracy",
]

TEACHER_FORMAT = "lpld-teacher"
TEACHER_FORMAT_VERSION = 1
# The arch recorded for a TorchScript teacher (its module carries its own code), and the prefix
# that names a timm model (``timm:convnext_tiny``).
TORCHSCRIPT = "torchscript"
TIMM_PREFIX = "timm:"

# Per-channel (mean, std) on [0, 1] pixels. Tiny-ImageNet's are the ones its reference teacher used.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherSpec:
    """Everything needed to rebuild a teacher's module and its input normalization."""

    arch: str
    num_classes: int
    small_stem: bool = False
    width: int = 16
    mean: tuple[float, float, float] = NORMALIZATIONS["imagenet"][0]
    std: tuple[float, float, float] = NORMALIZATIONS["imagenet"][1]
    source: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TeacherSpec:
        data = json.loads(text)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class TinyResNet(nn.Module):
    """A three-stage ResNet with BatchNorm for small images; trains in seconds on a CPU."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = _Block(width, width, 1)
        self.layer2 = _Block(width, 2 * width, 2)
        self.layer3 = _Block(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_model(spec: TeacherSpec, *, pretrained: bool = False) -> nn.Module:
    """The module that ``spec`` names, randomly initialized unless ``pretrained``."""
    if spec.arch == "tiny_resnet":
        if pretrained:
            raise ConfigError(
                "Expected teacher.weights other than 'pretrained' for tiny_resnet (it has none)."
            )
        return TinyResNet(spec.num_classes, spec.width)
    if spec.arch.startswith(TIMM_PREFIX):
        return _timm_model(spec, pretrained=pretrained)
    from torchvision import models

    if spec.arch not in models.list_models(module=models):
        raise ConfigError(
            f"Expected teacher.arch 'tiny_resnet', a torchvision classification model "
            f"(e.g. resnet18, resnet50, mobilenet_v2) or 'timm:NAME'. Got {spec.arch!r} instead."
        )
    if pretrained:
        weights = models.get_model_weights(spec.arch).DEFAULT
        model: nn.Module = models.get_model(spec.arch, weights=weights)
        got = len(weights.meta["categories"])
        if got != spec.num_classes:
            raise ConfigError(
                f"Expected pretrained {spec.arch} weights with {spec.num_classes} classes (the data's). "
                f"Got {got} instead; use a local checkpoint for this dataset."
            )
    else:
        model = models.get_model(spec.arch, weights=None, num_classes=spec.num_classes)
    if spec.small_stem:
        if not isinstance(getattr(model, "conv1", None), nn.Conv2d):
            raise ConfigError(f"Expected a ResNet-like model for teacher.small_stem. Got {spec.arch!r}.")
        out_channels = int(model.conv1.out_channels)  # type: ignore[union-attr,arg-type]
        model.conv1 = nn.Conv2d(3, out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


def _timm_model(spec: TeacherSpec, *, pretrained: bool) -> nn.Module:
    name = spec.arch.removeprefix(TIMM_PREFIX)
    try:
        import timm
    except ImportError as exc:
        raise MissingDependencyError(
            f"teacher {spec.arch!r} is a timm model, and timm is not installed: pip install timm"
        ) from exc
    if not timm.is_model(name):
        raise ConfigError(
            f"Expected a timm model name after 'timm:' (see timm.list_models()). Got {name!r} instead."
        )
    model: nn.Module = timm.create_model(name, pretrained=pretrained, num_classes=spec.num_classes)
    return model


class Teacher(nn.Module):
    """A frozen model in eval mode that takes [0, 1] images and normalizes them itself."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, spec: TeacherSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        # Not persistent: the state dict (and so its hash) is the model's alone.
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std.to(z.dtype) + self.mean.to(z.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def sha256(self) -> str:
        return state_dict_sha256(self.model.state_dict())


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order: equal weights, equal hash."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(state_dict[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_teacher_checkpoint(teacher: Teacher, path: str | Path) -> None:
    state = {k: v.detach().cpu() for k, v in teacher.model.state_dict().items()}
    torch.save(
        {
            "format": TEACHER_FORMAT,
            "format_version": TEACHER_FORMAT_VERSION,
            "spec": teacher.spec.to_json(),
            "state_dict": state,
        },
        path,
    )


def _read_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"Expected a teacher checkpoint at {str(path)!r}. Got no such file instead.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"Cannot read teacher checkpoint {str(path)!r}: {exc}") from exc


def load_teacher_checkpoint(path: str | Path) -> Teacher:
    """A teacher saved by :func:`save_teacher_checkpoint`."""
    return _checkpoint_teacher(_read_checkpoint(Path(path)), path)


def _checkpoint_teacher(blob: Any, path: str | Path) -> Teacher:
    if not (isinstance(blob, dict) and blob.get("format") == TEACHER_FORMAT):
        raise ArtifactError(f"Expected an {TEACHER_FORMAT!r} checkpoint at {str(path)!r}. Got another file.")
    if blob.get("format_version") != TEACHER_FORMAT_VERSION:
        raise ArtifactError(
            f"Expected teacher format version {TEACHER_FORMAT_VERSION}. Got {blob.get('format_version')!r}; "
            "upgrade lpld_pipeline."
        )
    spec = TeacherSpec.from_json(blob["spec"])
    model = build_model(spec)
    model.load_state_dict(blob["state_dict"])
    return Teacher(model, spec)


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``): a zip with a ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def _fit_problems(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """One line on how ``state`` does not fit ``model`` ('' if it fits): keys and shapes, a few of each."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{len(names)} {what} ({', '.join(names[:3])}{more})")
    return "; ".join(parts)


def _normalization(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    default: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    default_mean, default_std = default or NORMALIZATIONS["imagenet"]
    out = []
    for name, given, fallback in (("mean", mean, default_mean), ("std", std, default_std)):
        value = tuple(float(v) for v in (fallback if given is None else given))
        if len(value) != 3 or (name == "std" and min(value) <= 0):
            raise ConfigError(
                f"Expected --{name} as three numbers (one per RGB channel{', each > 0' if name == 'std' else ''}). "
                f"Got {list(value)!r} instead."
            )
        out.append(tuple(value))
    return out[0], out[1]  # type: ignore[return-value]


def load_teacher(
    path: str | Path,
    *,
    num_classes: int,
    arch: str = "",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    default_normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Teacher:
    """A teacher from a file in any of three forms, checked against ``num_classes`` before any use.

    - an ``lpld-teacher`` checkpoint (``lpld squeeze``'s ``teacher.pt``): it records its own
      architecture and normalization, so ``arch``, ``mean`` and ``std`` must be unset or agree;
    - a TorchScript file (``torch.jit.save``): the module as saved; ``arch`` must be unset;
    - a plain state dict (``torch.save(model.state_dict())``, also under a ``model`` or
      ``state_dict`` key, ``module.`` prefixes removed) of the model ``arch`` names: a torchvision
      classification model (``resnet18``) or ``timm:NAME`` (needs timm), built with
      ``num_classes`` outputs.

    ``mean``/``std`` are the normalization the teacher expects on [0, 1] pixels; where None, a
    TorchScript or state-dict teacher takes ``default_normalization`` (None: ImageNet's). A TorchScript teacher is run once on a blank image to check its number of outputs.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"Expected a teacher file at {str(path)!r}. Got no such file instead.")
    if _is_torchscript(path):
        if arch:
            raise ConfigError(
                f"Expected no teacher arch for the TorchScript file {path.name!r} (it holds its own module). "
                f"Got {arch!r}; drop it."
            )
        try:
            with warnings.catch_warnings():
                # torch deprecates TorchScript in favour of torch.export, but a file the user chose to
                # hand over is still to be read, without a warning about how it was made.
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning
                )
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ArtifactError(
                f"Cannot load TorchScript teacher {path.name!r}: {str(exc).splitlines()[0]}"
            ) from exc
        m, s = _normalization(mean, std, default_normalization)
        teacher = Teacher(
            module, TeacherSpec(arch=TORCHSCRIPT, num_classes=num_classes, mean=m, std=s, source=path.name)
        )
        with torch.no_grad():
            try:
                got = teacher(torch.zeros(1, 3, 32, 32))
            except Exception as exc:
                raise ArtifactError(
                    f"Cannot run TorchScript teacher {path.name!r} on a (1, 3, 32, 32) batch: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from exc
        if not (isinstance(got, torch.Tensor) and got.shape == (1, num_classes)):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ArtifactError(
                f"Expected TorchScript teacher {path.name!r} to return logits of shape (1, {num_classes}) "
                f"({num_classes} classes). Got {shape} instead."
            )
        return teacher
    blob = _read_checkpoint(path)
    if isinstance(blob, dict) and blob.get("format") == TEACHER_FORMAT:
        teacher = _checkpoint_teacher(blob, path)
        spec = teacher.spec
        if arch and arch != spec.arch:
            raise ConfigError(
                f"Expected teacher arch {spec.arch!r} or none for {path.name!r} (an lpld-teacher checkpoint). "
                f"Got {arch!r}; drop it."
            )
        for name, given, own in (("mean", mean, spec.mean), ("std", std, spec.std)):
            if given is not None and tuple(float(v) for v in given) != tuple(own):
                raise ConfigError(
                    f"Expected --{name} {list(own)} or none for {path.name!r}, whose checkpoint records it. "
                    f"Got {list(given)}; drop it."
                )
        if spec.num_classes != num_classes:
            raise ArtifactError(
                f"Expected a teacher with {num_classes} classes (the images'). Got {spec.num_classes} in "
                f"{path.name!r}; use the teacher of this dataset."
            )
        return teacher
    if not arch:
        raise ConfigError(
            f"Expected the model name of the plain state dict {path.name!r} (e.g. --teacher-arch resnet18, "
            "or timm:NAME). Got none."
        )
    state = _foreign_state_dict(blob, path)
    m, s = _normalization(mean, std, default_normalization)
    spec = TeacherSpec(arch=arch, num_classes=num_classes, mean=m, std=s, source=path.name)
    with torch.random.fork_rng(devices=[]):  # module init draws; the weights are replaced anyway
        model = build_model(spec)
    problems = _fit_problems(model, state)
    if problems:
        raise ArtifactError(
            f"Expected {path.name!r} to be a state dict of {arch} with {num_classes} classes. Its keys do not "
            f"fit: {problems}. Name the model it was saved from."
        )
    model.load_state_dict(state)
    return Teacher(model, spec)


def _foreign_state_dict(blob: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict):
        raise ArtifactError(f"Expected a state dict in {str(path)!r}. Got {type(blob).__name__} instead.")
    # DataParallel/DDP prefixes; the LPLD class-BN checkpoints' extra buffers are not model weights.
    return {
        k.removeprefix("module."): v
        for k, v in blob.items()
        if not k.rsplit(".", 1)[-1].startswith("class_running")
    }


def _data_normalization(dataset: Dataset[tuple[torch.Tensor, int]], batch_size: int) -> tuple[Any, Any]:
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for x, _ in DataLoader(dataset, batch_size=batch_size):
        x = x.double()
        total += x.sum((0, 2, 3))
        total_sq += (x * x).sum((0, 2, 3))
        count += x.numel() // 3
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def train_teacher(
    teacher: Teacher,
    dataset: Dataset[tuple[torch.Tensor, int]],
    config: TeacherConfig,
    *,
    seed: int,
    device: torch.device,
    views: Views | None = None,
    progress: bool = False,
) -> None:
    """Train ``teacher`` on ``dataset`` in place (SGD, cosine schedule); it ends in eval mode.

    With ``views``, every batch is replaced by its training views (epoch, batch index) first.
    ``progress`` shows a bar over all steps on stderr.
    """
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=config.train_batch_size, shuffle=True, generator=generator)
    model = teacher.model
    model.requires_grad_(True).train()
    opt = torch.optim.SGD(
        model.parameters(), lr=config.train_lr, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    steps = max(1, config.train_epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    bar = tqdm(
        total=config.train_epochs * len(loader),
        desc="teacher",
        unit="step",
        disable=None if progress else True,
        file=sys.stderr,
    )
    for epoch in range(config.train_epochs):
        for index, (x, y) in enumerate(loader):
            x = x.to(device)
            if views is not None:
                x = views(x, epoch, index)
            loss = F.cross_entropy(teacher(x), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    model.eval().requires_grad_(False)


@torch.no_grad()
def teacher_accuracy(
    teacher: Teacher,
    dataset: Dataset[tuple[torch.Tensor, int]],
    *,
    device: torch.device,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy of ``teacher`` on ``dataset``."""
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += int((teacher(x.to(device)).argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / max(1, total)


def make_teacher(
    config: TeacherConfig,
    *,
    num_classes: int,
    train_data: Dataset[tuple[torch.Tensor, int]] | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    views: Views | None = None,
    progress: bool = False,
) -> Teacher:
    """Build the teacher ``config`` names: trained on ``train_data``, random, pretrained or loaded.

    ``views`` (for ``weights='train'``) are the training views to train on; ``config.train_augment``
    asks the caller for them (:func:`lpld_pipeline.views.training_views`).
    """
    device = device or torch.device("cpu")
    if config.normalization == "data":
        if train_data is None:
            raise ConfigError("Expected training data to compute teacher.normalization='data'.")
        mean, std = _data_normalization(train_data, 512)
    else:
        mean, std = NORMALIZATIONS[config.normalization]
    weights = config.weights
    if not weights:
        raise ConfigError(
            "Expected teacher.weights: 'train', 'random', 'pretrained' or a checkpoint path. Got an empty "
            "string; this preset needs a local checkpoint, e.g. --set teacher.weights=/ckpt/resnet18.pth."
        )
    spec = TeacherSpec(
        arch=config.arch,
        num_classes=num_classes,
        small_stem=config.small_stem,
        width=config.width,
        mean=mean,
        std=std,
        source=weights,
    )
    # Module init draws from the global generator: seed it inside a fork so callers keep their state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec, pretrained=weights == "pretrained")
    if weights not in ("train", "random", "pretrained"):
        path = Path(weights)
        blob = _read_checkpoint(path)
        if isinstance(blob, dict) and blob.get("format") == TEACHER_FORMAT:
            return load_teacher_checkpoint(path).to(device)
        state = _foreign_state_dict(blob, path)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ArtifactError(
                f"Checkpoint {str(path)!r} does not fit teacher.arch={config.arch!r} with {num_classes} classes "
                f"(small_stem={config.small_stem}): {exc}"
            ) from exc
    teacher = Teacher(model, spec).to(device)
    if weights == "train":
        if train_data is None:
            raise ConfigError("Expected training data for teacher.weights='train'.")
        if config.train_augment and views is None:
            raise ConfigError("Expected the training views for teacher.train_augment=true. Got none.")
        train_teacher(teacher, train_data, config, seed=seed, device=device, views=views, progress=progress)
    return teacher
