"""Draw functions, kernels and checks of the registered augmentations (see ``lpldstore.augment``).

Every function here is pure. A draw function maps (an explicit numpy Generator, the relabel
config, the batch geometry) to the arrays that the store keeps, already in their stored dtypes; a
kernel maps (a batch tensor, those arrays, the relabel config) to a new tensor and never writes
into its input, unless called with ``inplace=True`` by a caller that owns the tensor (``apply_params``
for its intermediates: each pass over a 224 px float batch that is not allocated and copied
again saves tens of milliseconds per batch on CPU); the values are the same either way. A check raises :class:`~lpldstore.errors.ValidationError` when arrays cannot have
come from the draw function (out-of-image boxes, a non-permutation, ...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torchvision.transforms.v2 import functional as tvf

from lpldstore.config import RelabelConfig
from lpldstore.errors import ValidationError

Arrays = Mapping[str, npt.NDArray[Any]]

# torchvision's RandomResizedCrop.get_params tries this many boxes before the centre fallback.
CROP_ATTEMPTS = 10
# ImageNet-21K recipe (Alibaba-MIIL CutoutPIL, LPLD CutoutPILWithCoords): the cut is half the side.
CUTOUT_FACTOR = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchGeometry:
    """The shapes a batch's parameters refer to: ``n`` real images of ``image_hw`` resized to ``output_size``."""

    n: int
    image_hw: tuple[int, int]
    output_size: tuple[int, int]


def _fail(what: str, got: object, remedy: str = "") -> None:
    tail = f" {remedy}" if remedy else ""
    raise ValidationError(f"Expected {what}. Got {got} instead.{tail}")


def _tensor(arr: npt.ArrayLike, dtype: npt.DTypeLike, device: torch.device) -> torch.Tensor:
    # A fresh writable copy: stored arrays are read-only, which torch.as_tensor warns about.
    return torch.from_numpy(np.array(arr, dtype=dtype, copy=True)).to(device)


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


def crop_kernel(
    images: torch.Tensor, arrays: Arrays, relabel: RelabelConfig, *, inplace: bool = False
) -> torch.Tensor:
    """uint8 (n, H, W, 3) source images -> uint8 (n, 3, h, w): ``resized_crop`` on each uint8 CHW image.

    Always a new tensor (the output has another shape), ``inplace`` or not.

    The source is made NHWC-contiguous first (a no-op for the usual contiguous batch) so the
    memory layout that reaches ``interpolate`` does not depend on how the caller sliced its batch.
    """
    del inplace
    out_h, out_w = relabel.output_size
    interpolation = tvf.InterpolationMode(relabel.interpolation)
    src = images.contiguous().permute(0, 3, 1, 2)
    outs = [
        tvf.resized_crop(
            src[i],
            top,
            left,
            height,
            width,
            [out_h, out_w],
            interpolation=interpolation,
            antialias=relabel.antialias,
        )
        for i, (top, left, height, width) in enumerate(np.asarray(arrays["crop"]).tolist())
    ]
    if not outs:
        return images.new_empty((0, 3, out_h, out_w))
    return torch.stack(outs)


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


def flip_kernel(
    x: torch.Tensor, arrays: Arrays, relabel: RelabelConfig, *, inplace: bool = False
) -> torch.Tensor:
    """(n, 3, h, w) -> same: ``horizontal_flip`` of the samples whose ``flip`` is set."""
    del relabel
    out = x if inplace else x.clone()
    # Only the flagged samples are touched; x[chosen] is a copy, so writing into x is safe.
    chosen = _tensor(np.flatnonzero(np.asarray(arrays["flip"])), np.int64, x.device)
    if len(chosen):
        out[chosen] = tvf.horizontal_flip(x[chosen])
    return out


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


def cutmix_kernel(
    x: torch.Tensor, arrays: Arrays, relabel: RelabelConfig, *, inplace: bool = False
) -> torch.Tensor:
    """(n, 3, h, w) -> same: ``out[:, :, t:b, l:r] = x[mix_index, :, t:b, l:r]`` (SRe2L replay)."""
    del relabel
    top, left, bottom, right = np.asarray(arrays["mix_box"]).tolist()
    out = x if inplace else x.clone()
    if bottom > top and right > left:
        index = _tensor(arrays["mix_index"], np.int64, x.device)
        # The gathered region is a copy taken before any write, so in place is exact.
        out[:, :, top:bottom, left:right] = x[index, :, top:bottom, left:right]
    return out


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


def cutout_kernel(
    x: torch.Tensor, arrays: Arrays, relabel: RelabelConfig, *, inplace: bool = False
) -> torch.Tensor:
    """(n, 3, h, w) -> same: fill each sample's rectangle with its colour.

    The rectangle is PIL's ``ImageDraw.rectangle([x1, y1, x2, y2])`` of the recipe, whose corners
    are inclusive: rows ``clip(cy - ch // 2, 0, h)`` to ``clip(cy + ch // 2, 0, h)`` inclusive,
    hence the ``+ 1`` on the exclusive end (and the same for columns).
    """
    del relabel
    out_h, out_w = x.shape[-2:]
    out = x if inplace else x.clone()
    fill = _tensor(arrays["cutout_fill"], np.uint8, x.device).to(x.dtype)
    for i, (cy, cx, ch, cw) in enumerate(np.asarray(arrays["cutout_box"]).tolist()):
        y1, y2 = min(max(cy - ch // 2, 0), out_h), min(max(cy + ch // 2, 0), out_h)
        x1, x2 = min(max(cx - cw // 2, 0), out_w), min(max(cx + cw // 2, 0), out_w)
        out[i, :, y1 : min(y2 + 1, out_h), x1 : min(x2 + 1, out_w)] = fill[i].view(3, 1, 1)
    return out


# --- the fixed step between the uint8 and the float stages --------------------------------------


def normalize_into(
    out: torch.Tensor, x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    """``out[...] = to_normalized_float(x)`` computed in ``out`` (float32, x's shape), the same arithmetic:
    the uint8 -> float32 copy is exact, then ``* (1/255)``, ``- mean``, ``/ std`` in place."""
    if x.dtype != torch.uint8 or out.dtype != torch.float32 or out.shape != x.shape:
        _fail("a uint8 batch and a float32 output of its shape", f"{x.dtype} {tuple(x.shape)} -> {out.dtype}")
    out.copy_(x).mul_(1.0 / 255)
    tvf.normalize(out, mean=list(mean), std=list(std), inplace=True)


def to_normalized_float(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 -> float32: ``to_dtype(scale=True)`` (x * (1/255)) then ``normalize`` ((x - mean) / std)."""
    if x.dtype != torch.uint8:
        _fail("a uint8 batch before normalization", x.dtype)
    # to_dtype returns a new tensor for uint8 input, so normalizing it in place is the same
    # arithmetic without a second float batch (one allocation and pass fewer).
    return tvf.normalize(
        tvf.to_dtype(x, torch.float32, scale=True), mean=list(mean), std=list(std), inplace=True
    )
