"""Typed, frozen records of everything a store's root attributes hold.

Each record is a keyword-only frozen dataclass that validates itself on construction and
round-trips through JSON: ``Record.from_dict(r.to_dict()) == r``. ``from_dict`` rejects unknown
and missing keys by name, so a typo in a config file or a store written by a newer format fails
loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self, get_args

from lpldstore.errors import ConfigError
from lpldstore.format.codecs import CODECS, Codec
from lpldstore.format.fidelity import DEFAULT_FIDELITY_RATE

__all__ = [
    "DEFAULT_BLOCK_ENTRIES",
    "DEFAULT_KERNEL",
    "CodecConfig",
    "DatasetInfo",
    "Layout",
    "MixKind",
    "Provenance",
    "RelabelConfig",
]

MixKind = Literal["cutmix", "none"]
# Crop + resize is replayed with exactly this kernel; a store records it so that it is never
# silently replayed with another one.
DEFAULT_KERNEL = "torchvision.transforms.v2.functional.resized_crop"


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def _from_json(value: Any) -> Any:
    # JSON has no tuples: a record's array fields come back as tuples (of tuples) so that records
    # stay hashable. Free-form JSON objects (a config, codec params) are kept exactly as given.
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


class _Record:
    """JSON round-trip shared by every record; subclasses are frozen keyword-only dataclasses."""

    record_name: ClassVar[str]
    # Fields added after format version 2 are written only when they differ from their default,
    # so a store that does not use them has exactly the attributes an older writer gave it.
    written_if_set: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self.written_if_set and value == f.default:
                continue
            out[f.name] = _to_json(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"Expected a JSON object for {cls.record_name}. Got {type(data).__name__} instead."
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"Unknown key(s) {unknown} in {cls.record_name}; expected only {sorted(fields)}. "
                "Check for a typo, or upgrade lpldstore if the record was written by a newer version."
            )
        required = {
            n
            for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise ConfigError(f"Missing key(s) {missing} in {cls.record_name}.")
        try:
            return cls(**{k: _from_json(v) for k, v in data.items()})
        except TypeError as exc:
            raise ConfigError(f"Invalid {cls.record_name}: {exc}") from exc


def _check(ok: bool, record: str, what: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{record}.{what}. Got {got!r} instead.")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _finite_floats(value: Any, n: int) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == n
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetInfo(_Record):
    """What the distilled images are.

    ``mean`` and ``std`` are the per-channel normalization (on pixel values scaled to [0, 1]) that
    the teacher expects; the loader applies them on replay. ``images_sha256`` is the SHA-256 of the
    stored pixels followed by the labels, filled in by the writer.
    """

    record_name: ClassVar[str] = "dataset"

    name: str
    num_classes: int
    num_images: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    ipc: int | None = None
    class_names: tuple[str, ...] | None = None
    images_sha256: str | None = None

    def __post_init__(self) -> None:
        r = self.record_name
        _check(
            isinstance(self.name, str) and bool(self.name), r, "name must be a non-empty string", self.name
        )
        _check(_positive_int(self.num_classes), r, "num_classes must be a positive integer", self.num_classes)
        _check(_positive_int(self.num_images), r, "num_images must be a positive integer", self.num_images)
        shape = self.image_shape
        _check(
            isinstance(shape, tuple)
            and len(shape) == 3
            and all(_positive_int(s) for s in shape)
            and shape[2] == 3
            # Crop boxes are stored as int16 pixel coordinates.
            and max(shape[:2]) <= 32767,
            r,
            "image_shape must be (height, width, 3) with height and width in [1, 32767]",
            shape,
        )
        _check(_finite_floats(self.mean, 3), r, "mean must be three finite numbers", self.mean)
        _check(
            _finite_floats(self.std, 3) and all(s > 0 for s in self.std),
            r,
            "std must be three positive numbers",
            self.std,
        )
        _check(
            self.ipc is None or _positive_int(self.ipc), r, "ipc must be a positive integer or None", self.ipc
        )
        if self.class_names is not None:
            _check(
                isinstance(self.class_names, tuple)
                and len(self.class_names) == self.num_classes
                and all(isinstance(c, str) for c in self.class_names),
                r,
                f"class_names must be None or {self.num_classes} strings (one per class)",
                self.class_names if self.class_names is None else f"{len(self.class_names)} names",
            )
        _check(
            self.images_sha256 is None
            or (isinstance(self.images_sha256, str) and len(self.images_sha256) == 64),
            r,
            "images_sha256 must be None or a 64-character hex digest",
            self.images_sha256,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelabelConfig(_Record):
    """How the teacher's labels were made: the teacher and the augmentation recipe.

    Crop boxes follow torchvision's ``RandomResizedCrop`` (``crop_scale`` of the image area,
    ``crop_ratio`` width/height); the crop is resized to ``output_size`` (height, width) by
    ``kernel`` with ``interpolation``. ``seed`` seeds the augmentation draws; the batch composition
    is seeded by the plan. ``extras`` names the optional augmentations applied after the crop
    (``("cutout",)`` for the ImageNet-21K recipe); their parameters are stored per entry.
    """

    record_name: ClassVar[str] = "relabel"
    written_if_set: ClassVar[tuple[str, ...]] = ("extras",)

    output_size: tuple[int, int]
    teacher: str = "unknown"
    teacher_sha256: str | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    mix: MixKind = "cutmix"
    mix_alpha: float = 1.0
    seed: int = 0
    kernel: str = DEFAULT_KERNEL
    interpolation: str = "bilinear"
    antialias: bool = True
    extras: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        r = self.record_name
        size = self.output_size
        _check(
            isinstance(size, tuple) and len(size) == 2 and all(_positive_int(s) and s <= 32767 for s in size),
            r,
            "output_size must be (height, width) with both in [1, 32767]",
            size,
        )
        _check(isinstance(self.teacher, str), r, "teacher must be a string", self.teacher)
        lo, hi = self.crop_scale if _finite_floats(self.crop_scale, 2) else (1.0, 0.0)
        _check(
            0 < lo <= hi <= 1, r, "crop_scale must be (low, high) with 0 < low <= high <= 1", self.crop_scale
        )
        lo, hi = self.crop_ratio if _finite_floats(self.crop_ratio, 2) else (1.0, 0.0)
        _check(0 < lo <= hi, r, "crop_ratio must be (low, high) with 0 < low <= high", self.crop_ratio)
        _check(
            isinstance(self.flip_prob, int | float) and 0 <= self.flip_prob <= 1,
            r,
            "flip_prob must be a number in [0, 1]",
            self.flip_prob,
        )
        _check(self.mix in get_args(MixKind), r, f"mix must be one of {get_args(MixKind)}", self.mix)
        _check(
            isinstance(self.mix_alpha, int | float) and math.isfinite(self.mix_alpha) and self.mix_alpha > 0,
            r,
            "mix_alpha must be a positive number",
            self.mix_alpha,
        )
        _check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
            r,
            "seed must be a non-negative integer",
            self.seed,
        )
        _check(isinstance(self.kernel, str) and bool(self.kernel), r, "kernel must be a name", self.kernel)
        _check(
            self.interpolation in ("nearest", "bilinear", "bicubic"),
            r,
            "interpolation must be 'nearest', 'bilinear' or 'bicubic'",
            self.interpolation,
        )
        _check(isinstance(self.antialias, bool), r, "antialias must be a bool", self.antialias)
        # The names are checked against the augmentation registry where it is consulted
        # (lpldstore.format.augmentations), which imports this module.
        _check(
            isinstance(self.extras, tuple)
            and all(isinstance(e, str) for e in self.extras)
            and len(set(self.extras)) == len(self.extras),
            r,
            "extras must be a list of distinct augmentation names",
            self.extras,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodecConfig(_Record):
    """How the logits are encoded, and the temperature at which their fidelity is measured.

    ``name`` is a codec of :data:`lpldstore.format.codecs.CODECS` (``float16``, the default and format
    version 1's only codec; ``quantized`` and ``quantized_entropy`` with ``{"bits": 2..8}``; ``topk``
    with ``{"k": k, "tail": "MR" | "MS" | "MRS"}``), whose class checks ``params``.
    ``temperature`` is the training temperature: the writer measures KL divergence at it, and the
    ``topk`` MS tail stores probabilities at it. ``fidelity_rate`` is the fraction of entries
    whose fidelity the writer of a lossy codec measures (:func:`lpldstore.format.fidelity.fidelity_sampled`;
    lossless codecs measure none); a lossy store always records it, and a lossy store written
    before the rate existed reads as 1.0 (it measured every entry).
    """

    record_name: ClassVar[str] = "codec"

    name: str = "float16"
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    temperature: float = 20.0
    fidelity_rate: float = DEFAULT_FIDELITY_RATE

    def __post_init__(self) -> None:
        _check(
            self.name in CODECS,
            self.record_name,
            f"name must be one of {tuple(CODECS)} (upgrade lpldstore for other codecs)",
            self.name,
        )
        _check(
            isinstance(self.params, Mapping), self.record_name, "params must be a JSON object", self.params
        )
        _check(
            isinstance(self.temperature, int | float)
            and not isinstance(self.temperature, bool)
            and math.isfinite(self.temperature)
            and self.temperature > 0,
            self.record_name,
            "temperature must be a positive number",
            self.temperature,
        )
        _check(
            isinstance(self.fidelity_rate, int | float)
            and not isinstance(self.fidelity_rate, bool)
            and 0 <= self.fidelity_rate <= 1,
            self.record_name,
            "fidelity_rate must be a number in [0, 1]",
            self.fidelity_rate,
        )
        # The codec checks its own parameters; the class count is checked against the dataset.
        CODECS[self.name].parse_params(self.params)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if CODECS[self.name].lossless and self.fidelity_rate == DEFAULT_FIDELITY_RATE:
            # A lossless codec measures nothing: its record stays the one format 2 always wrote.
            del out["fidelity_rate"]
        return out

    def codec(self, num_classes: int) -> Codec:
        """The codec for rows of ``num_classes`` logits (build it once per store: ``StoreAttrs.logits_codec``)."""
        return CODECS[self.name].build(self.params, num_classes, float(self.temperature))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Provenance(_Record):
    """Where a store came from: the package version, when, the resolved config, its parents."""

    record_name: ClassVar[str] = "provenance"

    lpldstore_version: str
    created_utc: str
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    parents: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _check(
            isinstance(self.config, Mapping), self.record_name, "config must be a JSON object", self.config
        )
        _check(isinstance(self.parents, tuple), self.record_name, "parents must be a list", self.parents)


# The ownership and commit unit of the pool: small per-entry arrays are chunked by block, so
# writers owning disjoint blocks never touch the same file.
DEFAULT_BLOCK_ENTRIES = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layout(_Record):
    """How the pool is cut into files.

    ``block_entries`` entries form a block: the chunk of every small per-entry array, the commit
    unit and the unit a writer process owns. ``logits_shard_entries`` is ``None`` (one logits file
    per entry) or equal to ``block_entries`` (one shard file per block, written whole).
    """

    record_name: ClassVar[str] = "layout"

    block_entries: int = DEFAULT_BLOCK_ENTRIES
    logits_shard_entries: int | None = None

    def __post_init__(self) -> None:
        if not _positive_int(self.block_entries):
            raise ConfigError(
                f"layout.block_entries must be a positive integer. Got {self.block_entries!r} instead."
            )
        if self.logits_shard_entries not in (None, self.block_entries):
            raise ConfigError(
                "layout.logits_shard_entries must be None (one file per entry) or equal to block_entries "
                f"({self.block_entries}), so that one writer owns each shard. Got {self.logits_shard_entries!r} instead."
            )
