"""The augmentations of the relabel step, as data: what each draws, checks and stores.

Every augmentation is an :class:`AugmentSpec` in :data:`REGISTRY`, in replay order: its draw
function (a pure function of an explicit numpy Generator, the relabel config and the batch
geometry), its check (raises :class:`~lpldstore.errors.ValidationError` when arrays cannot have
come from the draw) and the arrays it stores per entry (:class:`StoredArray`). The store's array
declaration (:mod:`lpldstore.format.arrays`), the writer's validation, the reader and the loader
all derive from this registry; the kernels that apply the parameters to pixels live in the torch
layer (:mod:`lpldstore.augment`), keyed by the same names. Nothing here imports torch.

Adding an augmentation (say RandAugment): one :class:`AugmentSpec` here, with a new ``stream``
number, and its kernel in ``lpldstore.augment.kernels.KERNELS``.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lpldstore.errors import ConfigError, ValidationError
from lpldstore.format.records import DEFAULT_KERNEL, RelabelConfig

__all__ = [
    "CROP_ATTEMPTS",
    "CUTOUT_FACTOR",
    "INTERPOLATIONS",
    "KERNEL",
    "MAX_BATCH",
    "OPTIONAL",
    "PARAM_ARRAYS",
    "REGISTRY",
    "AugmentSpec",
    "BatchGeometry",
    "StoredArray",
    "check_extras",
    "enabled",
    "crop_box_sizes",
    "crop_boxes",
]

Arrays = Mapping[str, npt.NDArray[Any]]

# The crop+resize kernel this library replays: torchvision's v2 resized_crop on uint8 CHW tensors.
KERNEL = DEFAULT_KERNEL
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
# mix_index is stored as int16.
MAX_BATCH = int(np.iinfo(np.int16).max)
# torchvision's RandomResizedCrop.get_params tries this many boxes before the centre fallback.
CROP_ATTEMPTS = 10
# ImageNet-21K recipe (Alibaba-MIIL CutoutPIL, LPLD CutoutPILWithCoords): the cut is half the side.
CUTOUT_FACTOR = 0.5

Stage = Literal["source", "uint8", "float"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchGeometry:
    """The shapes a batch's parameters refer to: ``n`` real images of ``image_hw`` resized to ``output_size``."""

    n: int
    image_hw: tuple[int, int]
    output_size: tuple[int, int]


DrawFn = Callable[[np.random.Generator, RelabelConfig, BatchGeometry], dict[str, npt.NDArray[Any]]]
CheckFn = Callable[[Arrays, BatchGeometry], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredArray:
    """One per-entry array of an augmentation.

    ``scope`` ``"sample"`` arrays have shape ``(B, *trailing)`` per entry (one row per batch slot),
    ``"batch"`` arrays ``trailing``. ``fill_value`` is what an unwritten chunk reads as;
    ``fill_is_data`` says that a stored value may equal it (then a missing chunk is told apart
    from data by the chunk's existence, not by its values). ``pad_value`` fills the padded slots
    of a short last batch (sample scope).
    """

    name: str
    scope: Literal["sample", "batch"]
    dtype: str
    trailing: tuple[int, ...]
    fill_value: int | float | bool
    dimension_names: tuple[str, ...]
    fill_is_data: bool = False
    pad_value: int | bool | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class AugmentSpec:
    """A registered augmentation: how it draws, checks and stores its parameters.

    ``stream`` is its fixed child index of the per-batch SeedSequence; never reuse or renumber
    one, as that changes every stored draw. ``stage`` is where its kernel runs: on the uint8
    NHWC ``"source"`` batch, on the uint8 NCHW output batch, or on the normalized ``"float"``
    batch. ``optional`` augmentations run only in stores whose ``relabel.extras`` name them.
    """

    name: str
    stream: int
    stage: Stage
    optional: bool
    arrays: tuple[StoredArray, ...]
    draw: DrawFn
    check: CheckFn


def _fail(what: str, got: object, remedy: str = "") -> None:
    tail = f" {remedy}" if remedy else ""
    raise ValidationError(f"Expected {what}. Got {got} instead.{tail}")


def _check_shape(arrays: Arrays, name: str, shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
    if name not in arrays:
        _fail(f"an array {name!r}", f"only {sorted(arrays)}")
    arr = np.asarray(arrays[name])
    if arr.shape != shape:
        _fail(f"{name!r} of shape {shape}", f"shape {arr.shape}")
    return arr.astype(np.int64)


# --- random-resized crop ------------------------------------------------------------------------


def crop_box_sizes(
    area_u: npt.ArrayLike,
    ratio_u: npt.ArrayLike,
    image_hw: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Box heights, widths and found flags by ``RandomResizedCrop.get_params``'s rule, from uniforms.

    ``area_u`` and ``ratio_u`` are ``(n, attempts)`` uniforms in [0, 1): attempt ``a`` of sample
    ``i`` asks for ``area_u[i, a]`` of the scale range and ``ratio_u[i, a]`` of the log-ratio range;
    the first attempt that fits the image wins. A sample where none fits gets torchvision's
    fallback size (the whole image, clamped to the ratio range) and ``found`` False; its caller
    centres it. The one crop-size rule of the project: relabel's draws and synthesis use it.
    """
    height, width = image_hw
    area = height * width
    # lo + (hi - lo) * u: the same float64 arithmetic as numpy's Generator.uniform(lo, hi).
    target_area = area * (scale[0] + (scale[1] - scale[0]) * np.asarray(area_u, dtype=np.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * np.asarray(ratio_u, dtype=np.float64))
    # np.rint rounds half to even, as Python's round() in torchvision does.
    w = np.rint(np.sqrt(target_area * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target_area / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    found = np.asarray(ok.any(axis=1), dtype=np.bool_)
    first = ok.argmax(axis=1)
    rows = np.arange(len(ok))

    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fb_w, fb_h = round(height * max(ratio)), height
    else:
        fb_w, fb_h = width, height
    # torchvision can return an empty box for extreme ratio ranges on tiny images; we never do.
    fb_w, fb_h = min(max(fb_w, 1), width), min(max(fb_h, 1), height)
    h_sel = np.where(found, h[rows, first], fb_h).astype(np.int64)
    w_sel = np.where(found, w[rows, first], fb_w).astype(np.int64)
    return h_sel, w_sel, found


def crop_boxes(
    rng: np.random.Generator,
    image_hw: tuple[int, int],
    n: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """``n`` (top, left, height, width) boxes drawn like ``RandomResizedCrop.get_params``, and fallback flags.

    All attempts are drawn at once (``(n, 10)`` areas, then ``(n, 10)`` log-ratios, then the
    positions), so the draw is vectorized; the distribution is torchvision's, the stream layout
    is not (torchvision interleaves its draws on the global torch RNG).
    """
    height, width = image_hw
    area_u = rng.random((n, CROP_ATTEMPTS))
    ratio_u = rng.random((n, CROP_ATTEMPTS))
    h_sel, w_sel, found = crop_box_sizes(area_u, ratio_u, image_hw, scale, ratio)
    # Drawn for every sample (fallbacks included) so that the stream use does not depend on them.
    top = rng.integers(0, height - h_sel + 1)
    left = rng.integers(0, width - w_sel + 1)
    top = np.where(found, top, (height - h_sel) // 2)
    left = np.where(found, left, (width - w_sel) // 2)
    boxes = np.stack([top, left, h_sel, w_sel], axis=1).astype(np.int64).reshape(n, 4)
    return boxes, np.logical_not(found)


def draw_crop(
    rng: np.random.Generator, relabel: RelabelConfig, geom: BatchGeometry
) -> dict[str, npt.NDArray[Any]]:
    boxes, _ = crop_boxes(rng, geom.image_hw, geom.n, relabel.crop_scale, relabel.crop_ratio)
    return {"crop": boxes.astype(np.int16)}


def check_crop(arrays: Arrays, geom: BatchGeometry) -> None:
    box = _check_shape(arrays, "crop", (geom.n, 4))
    height, width = geom.image_hw
    top, left, h, w = box.T
    bad = (top < 0) | (left < 0) | (h < 1) | (w < 1) | (top + h > height) | (left + w > width)
    if bad.any():
        i = int(bad.argmax())
        _fail(
            f"crop boxes (top, left, height, width) inside the {height}x{width} source image",
            f"{tuple(box[i].tolist())} for sample {i}",
            "The parameters do not belong to these images.",
        )


# --- horizontal flip ----------------------------------------------------------------------------


def draw_flip(
    rng: np.random.Generator, relabel: RelabelConfig, geom: BatchGeometry
) -> dict[str, npt.NDArray[Any]]:
    # Same test as torchvision's RandomHorizontalFlip (rand < p): p = 0 never, p = 1 always flips.
    return {"flip": rng.random(geom.n) < relabel.flip_prob}


def check_flip(arrays: Arrays, geom: BatchGeometry) -> None:
    _check_shape(arrays, "flip", (geom.n,))
    if np.asarray(arrays["flip"]).dtype != np.bool_:
        _fail("'flip' of dtype bool", np.asarray(arrays["flip"]).dtype)


# --- CutMix -------------------------------------------------------------------------------------


def draw_cutmix(
    rng: np.random.Generator, relabel: RelabelConfig, geom: BatchGeometry
) -> dict[str, npt.NDArray[Any]]:
    n = geom.n
    if relabel.mix == "none":
        return {
            "mix_index": np.arange(n, dtype=np.int16),
            "mix_lam": np.array(1.0, dtype=np.float32),
            "mix_box": np.zeros(4, dtype=np.int16),
        }
    index = rng.permutation(n)
    # Rounded to the stored float32 first, so the box is a function of the stored lambda.
    lam = float(np.float32(rng.beta(relabel.mix_alpha, relabel.mix_alpha)))
    cut = math.sqrt(max(0.0, 1.0 - lam))
    out_h, out_w = geom.output_size
    # SRe2L's rand_bbox: int() truncation, uniform centre, half-cut each side, clipped.
    cut_h, cut_w = int(out_h * cut), int(out_w * cut)
    cy, cx = int(rng.integers(out_h)), int(rng.integers(out_w))
    box = (
        min(max(cy - cut_h // 2, 0), out_h),
        min(max(cx - cut_w // 2, 0), out_w),
        min(max(cy + cut_h // 2, 0), out_h),
        min(max(cx + cut_w // 2, 0), out_w),
    )
    return {
        "mix_index": index.astype(np.int16),
        "mix_lam": np.array(lam, dtype=np.float32),
        "mix_box": np.array(box, dtype=np.int16),
    }


def check_cutmix(arrays: Arrays, geom: BatchGeometry) -> None:
    index = _check_shape(arrays, "mix_index", (geom.n,))
    if not np.array_equal(np.sort(index), np.arange(geom.n)):
        _fail(f"'mix_index' to be a permutation of range({geom.n})", index.tolist())
    lam = np.asarray(arrays.get("mix_lam", np.nan), dtype=np.float64)
    if lam.shape != () or not 0.0 <= float(lam) <= 1.0:
        _fail("'mix_lam' to be one number in [0, 1]", lam)
    top, left, bottom, right = _check_shape(arrays, "mix_box", (4,)).tolist()
    out_h, out_w = geom.output_size
    if not (0 <= top <= bottom <= out_h and 0 <= left <= right <= out_w):
        _fail(
            f"'mix_box' (top, left, bottom, right) inside the {out_h}x{out_w} output",
            (top, left, bottom, right),
        )


# --- cutout (ImageNet-21K recipe) ---------------------------------------------------------------


def draw_cutout(
    rng: np.random.Generator, relabel: RelabelConfig, geom: BatchGeometry
) -> dict[str, npt.NDArray[Any]]:
    del relabel
    n = geom.n
    out_h, out_w = geom.output_size
    cut_h, cut_w = int(CUTOUT_FACTOR * out_h + 0.5), int(CUTOUT_FACTOR * out_w + 0.5)
    cy = rng.integers(0, out_h, size=n)
    cx = rng.integers(0, out_w, size=n)
    fill = rng.integers(0, 256, size=(n, 3))
    box = np.stack([cy, cx, np.full(n, cut_h), np.full(n, cut_w)], axis=1).reshape(n, 4)
    return {"cutout_box": box.astype(np.int16), "cutout_fill": fill.astype(np.uint8)}


def check_cutout(arrays: Arrays, geom: BatchGeometry) -> None:
    box = _check_shape(arrays, "cutout_box", (geom.n, 4))
    _check_shape(arrays, "cutout_fill", (geom.n, 3))
    if np.asarray(arrays["cutout_fill"]).dtype != np.uint8:
        _fail("'cutout_fill' of dtype uint8", np.asarray(arrays["cutout_fill"]).dtype)
    out_h, out_w = geom.output_size
    cy, cx, ch, cw = box.T
    bad = (cy < 0) | (cy >= out_h) | (cx < 0) | (cx >= out_w) | (ch < 0) | (cw < 0)
    if bad.any():
        i = int(bad.argmax())
        _fail(
            f"cutout boxes (centre y, centre x, cut h, cut w) centred inside the {out_h}x{out_w} output",
            f"{tuple(box[i].tolist())} for sample {i}",
        )


# --- the registry -------------------------------------------------------------------------------


def _sample(
    name: str,
    dtype: str,
    trailing: tuple[int, ...],
    fill: int | bool,
    dims: tuple[str, ...],
    *,
    data: bool = False,
    pad: int | bool | None = None,
) -> StoredArray:
    return StoredArray(
        name=name,
        scope="sample",
        dtype=dtype,
        trailing=trailing,
        fill_value=fill,
        dimension_names=("entry", "slot", *dims),
        fill_is_data=data,
        pad_value=fill if pad is None else pad,
    )


def _batch(
    name: str, dtype: str, trailing: tuple[int, ...], fill: float, dims: tuple[str, ...]
) -> StoredArray:
    return StoredArray(
        name=name,
        scope="batch",
        dtype=dtype,
        trailing=trailing,
        fill_value=fill,
        dimension_names=("entry", *dims),
    )


# Fill values are impossible values where possible (-1 boxes, NaN lambda), so that a missing
# chunk reads as damage rather than as data; a flip flag and a cutout colour have none.
_SPECS = (
    AugmentSpec(
        name="crop",
        stream=0,
        stage="source",
        optional=False,
        # Padded slots hold zero boxes (since format version 1).
        arrays=(_sample("crop", "int16", (4,), -1, ("box",), pad=0),),
        draw=draw_crop,
        check=check_crop,
    ),
    AugmentSpec(
        name="cutout",
        stream=3,
        stage="uint8",
        optional=True,
        arrays=(
            _sample("cutout_box", "int16", (4,), -1, ("box",)),
            _sample("cutout_fill", "uint8", (3,), 0, ("channel",), data=True),
        ),
        draw=draw_cutout,
        check=check_cutout,
    ),
    AugmentSpec(
        name="flip",
        stream=1,
        stage="uint8",
        optional=False,
        arrays=(_sample("flip", "bool", (), False, (), data=True),),
        draw=draw_flip,
        check=check_flip,
    ),
    AugmentSpec(
        name="cutmix",
        stream=2,
        stage="float",
        optional=False,
        arrays=(
            _sample("mix_index", "int16", (), -1, ()),
            _batch("mix_lam", "float32", (), math.nan, ()),
            _batch("mix_box", "int16", (4,), -1, ("box",)),
        ),
        draw=draw_cutmix,
        check=check_cutmix,
    ),
)
#: Every augmentation by name, in replay order. Read-only.
REGISTRY: Mapping[str, AugmentSpec] = types.MappingProxyType({s.name: s for s in _SPECS})
#: Every stored parameter array by name. Read-only.
PARAM_ARRAYS: Mapping[str, StoredArray] = types.MappingProxyType(
    {a.name: a for s in _SPECS for a in s.arrays}
)
#: The optional augmentations, which a store enables with ``relabel.extras``.
OPTIONAL: tuple[str, ...] = tuple(s.name for s in _SPECS if s.optional)


def check_extras(extras: tuple[str, ...]) -> None:
    """Raise :class:`~lpldstore.errors.ConfigError` unless every name is an optional augmentation."""
    unknown = sorted(set(extras) - set(OPTIONAL))
    if unknown:
        raise ConfigError(f"Expected optional augmentations among {list(OPTIONAL)}. Got {unknown} instead.")


def enabled(relabel: RelabelConfig) -> tuple[AugmentSpec, ...]:
    """The augmentations that a store made with ``relabel`` applies and stores, in replay order."""
    check_extras(relabel.extras)
    return tuple(s for s in _SPECS if not s.optional or s.name in relabel.extras)
