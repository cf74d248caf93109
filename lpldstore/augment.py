"""Augmentation as data: every augmentation of the relabel step is a (draw, kernel) pair.

Draws are pure functions of ``(relabel.seed, epoch, batch)``: augmentation ``spec`` draws from
``numpy.random.default_rng(SeedSequence([seed, epoch, batch], spawn_key=(spec.stream,)))``, i.e.
child ``spec.stream`` of ``SeedSequence([seed, epoch, batch]).spawn(...)``, so adding an
augmentation never changes the draws of the others. No global RNG is used anywhere.

Kernels are pure functions of (batch tensor, stored arrays, relabel config). Relabeling calls
:func:`apply_params` on freshly drawn parameters, the loader calls it on parameters read back from
the store; both run the same kernels, so on the same device, dtype and build the pixels are
bit-identical. The replay order of one batch (``docs/augmentations.md``):

1. ``crop``: per sample, ``torchvision.transforms.v2.functional.resized_crop`` of the uint8 CHW
   source image to ``output_size`` (``relabel.interpolation``, ``relabel.antialias``); uint8 out.
2. ``cutout`` (optional, ImageNet-21K recipe): a uint8-coloured rectangle per sample.
3. ``flip``: ``horizontal_flip`` where the sample's flag is set.
4. uint8 -> float32 in [0, 1] (``to_dtype(scale=True)``), then ``normalize(mean, std)``.
5. ``cutmix``: ``x[:, :, t:b, l:r] = x[mix_index, :, t:b, l:r]`` on the normalized batch.

:data:`REGISTRY` lists the augmentations in this order with the arrays each one stores; the store
schema, the writer's validation and the loader all consult it.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch

from lpldstore import _augment_ops as ops
from lpldstore._augment_ops import CROP_ATTEMPTS, CUTOUT_FACTOR, BatchGeometry, crop_box_sizes
from lpldstore.config import DEFAULT_KERNEL, RelabelConfig
from lpldstore.errors import ConfigError, ValidationError

__all__ = [
    "CROP_ATTEMPTS",
    "CUTOUT_FACTOR",
    "INTERPOLATIONS",
    "KERNEL",
    "MAX_BATCH",
    "REGISTRY",
    "AugmentParams",
    "AugmentSpec",
    "BatchGeometry",
    "StoredArray",
    "apply_params",
    "augment_rng",
    "crop_box_sizes",
    "check_kernel_name",
    "draw_params",
    "validate_params",
]

# The crop+resize kernel this library replays: torchvision's v2 resized_crop on uint8 CHW tensors.
KERNEL = DEFAULT_KERNEL
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# mix_index is stored as int16.
MAX_BATCH = int(np.iinfo(np.int16).max)
# Float bytes per chunk of samples that apply_params takes through the uint8 kernels and the
# normalization on CPU: a few MB stays in cache (about 20% faster at 224 px than whole batches).
_CHUNK_BYTES = 4 << 20

Stage = Literal["source", "uint8", "float"]
DrawFn = Callable[[np.random.Generator, RelabelConfig, BatchGeometry], dict[str, npt.NDArray[Any]]]


class KernelFn(Protocol):
    """``kernel(x, arrays, relabel, *, inplace=False) -> tensor``; writes into ``x`` only when ``inplace``."""

    def __call__(
        self,
        x: torch.Tensor,
        arrays: Mapping[str, npt.NDArray[Any]],
        relabel: RelabelConfig,
        /,
        *,
        inplace: bool = False,
    ) -> torch.Tensor: ...


CheckFn = Callable[[Mapping[str, npt.NDArray[Any]], BatchGeometry], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredArray:
    """One per-entry array of an augmentation.

    ``scope`` ``"sample"`` arrays have shape ``(B, *trailing)`` per entry (one row per batch slot),
    ``"batch"`` arrays ``trailing``. ``fill_value`` marks padded slots and unwritten entries.
    """

    name: str
    scope: Literal["sample", "batch"]
    dtype: str
    trailing: tuple[int, ...]
    fill_value: int | float | bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentSpec:
    """A registered augmentation: how it draws, applies, checks and stores its parameters.

    ``stream`` is its fixed child index of the per-batch SeedSequence; never reuse or renumber
    one, as that changes every stored draw. ``stage`` is where its kernel runs: on the uint8
    NHWC ``"source"`` batch, on the uint8 NCHW output batch, or on the normalized ``"float"``
    batch. ``optional`` augmentations run only when their arrays are present.
    """

    name: str
    stream: int
    stage: Stage
    optional: bool
    arrays: tuple[StoredArray, ...]
    draw: DrawFn
    kernel: KernelFn
    check: CheckFn


def _sample(name: str, dtype: str, trailing: tuple[int, ...], fill: int | bool) -> StoredArray:
    return StoredArray(name=name, scope="sample", dtype=dtype, trailing=trailing, fill_value=fill)


def _batch(name: str, dtype: str, trailing: tuple[int, ...], fill: float) -> StoredArray:
    return StoredArray(name=name, scope="batch", dtype=dtype, trailing=trailing, fill_value=fill)


_SPECS = (
    AugmentSpec(
        name="crop",
        stream=0,
        stage="source",
        optional=False,
        arrays=(_sample("crop", "int16", (4,), -1),),
        draw=ops.draw_crop,
        kernel=ops.crop_kernel,
        check=ops.check_crop,
    ),
    AugmentSpec(
        name="cutout",
        stream=3,
        stage="uint8",
        optional=True,
        arrays=(_sample("cutout_box", "int16", (4,), -1), _sample("cutout_fill", "uint8", (3,), 0)),
        draw=ops.draw_cutout,
        kernel=ops.cutout_kernel,
        check=ops.check_cutout,
    ),
    AugmentSpec(
        name="flip",
        stream=1,
        stage="uint8",
        optional=False,
        arrays=(_sample("flip", "bool", (), False),),
        draw=ops.draw_flip,
        kernel=ops.flip_kernel,
        check=ops.check_flip,
    ),
    AugmentSpec(
        name="cutmix",
        stream=2,
        stage="float",
        optional=False,
        arrays=(
            _sample("mix_index", "int16", (), -1),
            _batch("mix_lam", "float32", (), math.nan),
            _batch("mix_box", "int16", (4,), -1),
        ),
        draw=ops.draw_cutmix,
        kernel=ops.cutmix_kernel,
        check=ops.check_cutmix,
    ),
)
#: Every augmentation by name, in replay order. Read-only.
REGISTRY: Mapping[str, AugmentSpec] = types.MappingProxyType({s.name: s for s in _SPECS})

_ARRAYS: Mapping[str, StoredArray] = types.MappingProxyType({a.name: a for s in _SPECS for a in s.arrays})
_CORE_ARRAYS = frozenset(a.name for s in _SPECS if not s.optional for a in s.arrays)
_OPTIONAL = tuple(s.name for s in _SPECS if s.optional)


def _read_only(arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
    arr = np.array(arr, copy=True)
    arr.setflags(write=False)
    return arr


def _as_int(arr: npt.ArrayLike, name: str, dtype: type[np.integer[Any]]) -> npt.NDArray[Any]:
    a = np.asarray(arr)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise ValidationError(f"Expected integer {name!r}. Got dtype {a.dtype} instead.")
    return a.astype(dtype)


def _rebuild(fields: dict[str, Any]) -> AugmentParams:
    return AugmentParams(**fields)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AugmentParams:
    """All augmentation parameters of one batch of ``n`` real images.

    ``crops`` (n, 4) (top, left, height, width) in source pixels; ``flips`` (n,); ``mix_index``
    (n,) CutMix partner of each slot; ``mix_lam`` the drawn Beta(alpha, alpha) value (a float32
    value, so it survives the store exactly); ``mix_box`` (top, left, bottom, right) in output
    pixels; ``extra`` the stored arrays of optional augmentations (e.g. ``cutout_box``,
    ``cutout_fill``). Arrays are copied and made read-only; equality compares values and dtypes.
    """

    crops: npt.NDArray[np.int32]
    flips: npt.NDArray[np.bool_]
    mix_index: npt.NDArray[np.int64]
    mix_lam: float
    mix_box: tuple[int, int, int, int]
    extra: Mapping[str, npt.NDArray[Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        crops = _read_only(_as_int(self.crops, "crops", np.int32))
        n = crops.shape[0] if crops.ndim == 2 else -1
        if crops.shape != (n, 4):
            raise ValidationError(f"Expected crops of shape (n, 4). Got shape {crops.shape} instead.")
        flips = np.asarray(self.flips)
        if flips.dtype != np.bool_ or flips.shape != (n,):
            raise ValidationError(
                f"Expected flips of dtype bool, shape ({n},). Got {flips.dtype} {flips.shape}."
            )
        mix_index = _read_only(_as_int(self.mix_index, "mix_index", np.int64))
        if mix_index.shape != (n,):
            raise ValidationError(f"Expected mix_index of shape ({n},). Got shape {mix_index.shape} instead.")
        box = tuple(int(v) for v in _as_int(self.mix_box, "mix_box", np.int64).reshape(-1))
        if len(box) != 4:
            raise ValidationError(f"Expected mix_box of 4 integers. Got {box} instead.")
        lam = float(self.mix_lam)
        if not math.isfinite(lam):
            raise ValidationError(f"Expected a finite mix_lam. Got {lam} instead.")
        extra: dict[str, npt.NDArray[Any]] = {}
        for name, value in self.extra.items():
            spec = _ARRAYS.get(name)
            if spec is None or name in _CORE_ARRAYS:
                optional = sorted(a.name for s in _OPTIONAL for a in REGISTRY[s].arrays)
                raise ValidationError(f"Expected extra arrays among {optional}. Got {name!r} instead.")
            arr = np.asarray(value)
            shape = ((n,) if spec.scope == "sample" else ()) + spec.trailing
            if arr.shape != shape:
                raise ValidationError(f"Expected {name!r} of shape {shape}. Got shape {arr.shape} instead.")
            extra[name] = _read_only(_cast(arr, spec))
        for field, value in (("crops", crops), ("flips", _read_only(flips)), ("mix_index", mix_index)):
            object.__setattr__(self, field, value)
        object.__setattr__(self, "mix_box", box)
        object.__setattr__(self, "mix_lam", lam)
        object.__setattr__(self, "extra", types.MappingProxyType(extra))

    @property
    def n(self) -> int:
        """The number of real images in the batch."""
        return int(self.crops.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AugmentParams):
            return NotImplemented
        mine, theirs = self.to_arrays(), other.to_arrays()
        return mine.keys() == theirs.keys() and all(
            mine[k].dtype == theirs[k].dtype and np.array_equal(mine[k], theirs[k]) for k in mine
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # The read-only mapping proxy does not pickle; rebuild through the validating constructor.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["extra"] = dict(self.extra)
        return (_rebuild, (fields,))

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The stored arrays of this batch (n rows per sample array), in the registry's dtypes."""
        arrays = {
            "crop": self.crops,
            "flip": self.flips,
            "mix_index": self.mix_index,
            "mix_lam": np.asarray(self.mix_lam),
            "mix_box": np.asarray(self.mix_box),
        }
        out = {name: _cast(arr, _ARRAYS[name]) for name, arr in arrays.items()}
        out.update(self.extra)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.ArrayLike]) -> AugmentParams:
        """Inverse of :meth:`to_arrays`: params from the stored arrays of one batch (padding removed)."""
        missing = sorted(_CORE_ARRAYS - set(arrays))
        if missing:
            raise ValidationError(f"Expected the arrays {sorted(_CORE_ARRAYS)}. Got no {missing}.")
        return cls(
            crops=np.asarray(arrays["crop"]),
            flips=np.asarray(arrays["flip"]).astype(np.bool_, copy=False),
            mix_index=np.asarray(arrays["mix_index"]),
            mix_lam=float(np.asarray(arrays["mix_lam"])),
            mix_box=tuple(np.asarray(arrays["mix_box"]).tolist()),
            extra={k: np.asarray(v) for k, v in arrays.items() if k not in _CORE_ARRAYS},
        )


def _cast(arr: npt.NDArray[Any], spec: StoredArray) -> npt.NDArray[Any]:
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.integer) and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise ValidationError(
                f"Expected {spec.name!r} values in [{info.min}, {info.max}] (stored as {dtype}). "
                f"Got values in [{arr.min()}, {arr.max()}] instead."
            )
    return arr.astype(dtype)


def augment_rng(seed: int, epoch: int, batch: int, stream: int) -> np.random.Generator:
    """The generator of augmentation ``stream`` for entry (``epoch``, ``batch``) under ``seed``."""
    for what, value in (("seed", seed), ("epoch", epoch), ("batch", batch), ("stream", stream)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"Expected a non-negative integer {what}. Got {value!r} instead.")
    seq = np.random.SeedSequence([int(seed), int(epoch), int(batch)], spawn_key=(int(stream),))
    return np.random.default_rng(seq)


def draw_params(
    relabel: RelabelConfig,
    image_hw: tuple[int, int],
    n: int,
    epoch: int,
    batch: int,
    *,
    extras: Collection[str] = (),
) -> AugmentParams:
    """Draw the parameters of entry (``epoch``, ``batch``): a pure function of its arguments.

    ``n`` is the number of real images in the batch, ``image_hw`` their (height, width).
    ``extras`` names the optional augmentations to draw (e.g. ``("cutout",)``).
    """
    unknown = sorted(set(extras) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(f"Expected optional augmentations among {list(_OPTIONAL)}. Got {unknown} instead.")
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or not 0 <= n <= MAX_BATCH:
        raise ConfigError(
            f"Expected a batch of 0 to {MAX_BATCH} images (mix_index is stored as int16). Got {n!r} instead."
        )
    height, width = image_hw
    if not (0 < height <= MAX_BATCH and 0 < width <= MAX_BATCH):
        raise ConfigError(f"Expected image_hw with sides in [1, {MAX_BATCH}]. Got {image_hw!r} instead.")
    geom = BatchGeometry(n=int(n), image_hw=(int(height), int(width)), output_size=relabel.output_size)
    arrays: dict[str, npt.NDArray[Any]] = {}
    for spec in REGISTRY.values():
        if spec.optional and spec.name not in extras:
            continue
        arrays.update(spec.draw(augment_rng(relabel.seed, epoch, batch, spec.stream), relabel, geom))
    return AugmentParams.from_arrays(arrays)


def _active(params: AugmentParams) -> list[AugmentSpec]:
    active = []
    for spec in REGISTRY.values():
        present = [a.name in params.extra for a in spec.arrays]
        if spec.optional and any(present) and not all(present):
            raise ValidationError(
                f"Expected all of {[a.name for a in spec.arrays]} for {spec.name!r}. "
                f"Got only {sorted(params.extra)}."
            )
        if not spec.optional or all(present):
            active.append(spec)
    return active


def validate_params(params: AugmentParams, image_hw: tuple[int, int], output_size: tuple[int, int]) -> None:
    """Raise :class:`~lpldstore.errors.ValidationError` unless every array fits the geometry."""
    geom = BatchGeometry(n=params.n, image_hw=tuple(image_hw), output_size=tuple(output_size))  # type: ignore[arg-type]
    arrays = params.to_arrays()
    for spec in _active(params):
        spec.check(arrays, geom)


def check_kernel_name(
    stored_kernel: str,
    stored_interpolation: str,
    *,
    replay_interpolation: str | None = None,
    override: bool = False,
) -> None:
    """Refuse to replay a store made with another crop kernel or interpolation than replay uses.

    Raises :class:`~lpldstore.errors.ConfigError` when ``stored_kernel`` is not :data:`KERNEL`,
    when ``stored_interpolation`` is not one this library implements, or when
    ``replay_interpolation`` is given and differs from it; ``override=True`` accepts the mismatch
    (the replayed pixels then differ from those the teacher labelled).
    """
    if override:
        return
    hint = "Replay with the recorded kernel, or pass override=True to accept pixels the teacher did not see."
    if stored_kernel != KERNEL:
        raise ConfigError(
            f"Expected a store made with the crop kernel {KERNEL!r}. Got {stored_kernel!r} instead. {hint}"
        )
    if stored_interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"Expected a stored interpolation among {INTERPOLATIONS}. Got {stored_interpolation!r} instead. {hint}"
        )
    if replay_interpolation is not None and replay_interpolation != stored_interpolation:
        raise ConfigError(
            f"Expected replay with the stored interpolation {stored_interpolation!r}. "
            f"Got {replay_interpolation!r} instead. {hint}"
        )


def apply_params(
    images: torch.Tensor,
    params: AugmentParams,
    relabel: RelabelConfig,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    override_kernel: bool = False,
) -> torch.Tensor:
    """Apply a batch's parameters: uint8 (n, H, W, 3) images -> float32 (n, 3, h, w), on their device.

    The input is never modified. Runs the registry's kernels in replay order (module docstring);
    raises :class:`~lpldstore.errors.ConfigError` if ``relabel`` names another kernel (see
    :func:`check_kernel_name`) and :class:`~lpldstore.errors.ValidationError` if the parameters do
    not fit the images.
    """
    check_kernel_name(relabel.kernel, relabel.interpolation, override=override_kernel)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images)
        raise ValidationError(f"Expected a uint8 tensor (n, H, W, 3). Got {got} instead.")
    if images.shape[0] != params.n or images.shape[3] != 3:
        raise ValidationError(
            f"Expected images of shape ({params.n}, H, W, 3) for these params. Got {tuple(images.shape)} instead."
        )
    validate_params(params, (images.shape[1], images.shape[2]), relabel.output_size)
    arrays = params.to_arrays()
    active = _active(params)
    uint8_specs = [s for s in active if s.stage != "float"]
    float_specs = [s for s in active if s.stage == "float"]
    n = params.n
    rows = n
    if images.device.type == "cpu" and all(a.scope == "sample" for s in uint8_specs for a in s.arrays):
        # Sample-wise kernels (tested: a sample's output does not depend on the others) run a few
        # samples at a time, so their float conversion and normalization stay in the CPU cache.
        out_h, out_w = relabel.output_size
        rows = max(1, _CHUNK_BYTES // (3 * out_h * out_w * 4))
    out: torch.Tensor | None = None
    for start in range(0, n, rows) if n else [0]:
        part = slice(start, min(n, start + rows))
        sub = {k: (v[part] if _ARRAYS[k].scope == "sample" else v) for k, v in arrays.items()}
        x = images[part]
        # Every kernel returns a new tensor, so after the first one the batch is ours to modify.
        owned = False
        for spec in uint8_specs:
            x, owned = spec.kernel(x, sub, relabel, inplace=owned), True
        if out is None:
            out = torch.empty((n, *x.shape[1:]), dtype=torch.float32, device=x.device)
        ops.normalize_into(out[part], x, tuple(mean), tuple(std))
    assert out is not None
    for spec in float_specs:
        out = spec.kernel(out, arrays, relabel, inplace=True)
    return out
