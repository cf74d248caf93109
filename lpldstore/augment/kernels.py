"""The torch kernels that apply stored augmentation parameters to pixels (see ``lpldstore.augment``).

A kernel maps (a batch tensor, the stored arrays of its batch, the relabel config) to a new tensor
and never writes into its input, unless called with ``inplace=True`` by a caller that owns the
tensor (``apply_params`` for its intermediates: each pass over a 224 px float batch that is not
allocated and copied again saves tens of milliseconds per batch on CPU); the values are the same
either way. :data:`KERNELS` holds one kernel per augmentation of
:data:`lpldstore.format.augmentations.REGISTRY`, by the same name.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as tvf

from lpldstore.errors import ValidationError
from lpldstore.format.records import RelabelConfig

__all__ = ["KERNELS", "CropResizer", "KernelFn", "normalize_into", "resize_crop", "to_normalized_float"]

Arrays = Mapping[str, npt.NDArray[Any]]


class KernelFn(Protocol):
    """``kernel(x, arrays, relabel, *, inplace=False) -> tensor``; writes into ``x`` only when ``inplace``."""

    def __call__(
        self,
        x: torch.Tensor,
        arrays: Arrays,
        relabel: RelabelConfig,
        /,
        *,
        inplace: bool = False,
    ) -> torch.Tensor: ...


def _tensor(arr: npt.ArrayLike, dtype: npt.DTypeLike, device: torch.device) -> torch.Tensor:
    # A fresh writable copy: stored arrays are read-only, which torch.as_tensor warns about.
    return torch.from_numpy(np.array(arr, dtype=dtype, copy=True)).to(device)


try:  # torchvision's own choice of native uint8 resizing on CPU (bilinear: AVX2/AVX512 or arm64)
    from torchvision.transforms.v2.functional._geometry import (
        _do_native_uint8_resize_on_cpu as _tv_native_uint8_on_cpu,
    )
except ImportError:  # pragma: no cover - torchvision moved it: resize through its public function
    _tv_native_uint8_on_cpu = None


# The function nnf.interpolate ends in for each 4-D (mode, antialias); see _direct_resize.
_ATEN_RESIZE = {
    ("bilinear", True): "_upsample_bilinear2d_aa",
    ("bilinear", False): "upsample_bilinear2d",
    ("bicubic", True): "_upsample_bicubic2d_aa",
    ("bicubic", False): "upsample_bicubic2d",
    ("nearest", False): "upsample_nearest2d",
}


@functools.cache
def _direct_resize(mode: str, antialias: bool, device_type: str) -> Callable[..., torch.Tensor] | None:
    """The aten resize that ``nnf.interpolate(x, size=..., mode=mode, antialias=antialias)`` calls
    for a 4-D ``x``, or None to call ``interpolate`` itself.

    ``interpolate`` spends about a third of a 64 px crop's time in argument checks before it calls
    this function with the output size and no scale factors. Calling it directly is only done
    where that is all ``interpolate`` does (not for plain bilinear off the CPU, which it may route
    to a deterministic decomposition) and after a probe here has given ``interpolate``'s values
    exactly; a torch without the function, or with another signature, keeps ``interpolate``.
    """
    name = _ATEN_RESIZE.get((mode, antialias))
    fn = getattr(torch._C._nn, name, None) if name else None
    if fn is None or (device_type != "cpu" and mode == "bilinear" and not antialias):
        return None
    align = None if mode == "nearest" else False
    gen = torch.Generator().manual_seed(0)
    try:
        for dtype in (torch.uint8, torch.float32):
            probe = torch.randint(0, 256, (1, 13, 17, 3), generator=gen).to(dtype).permute(0, 3, 1, 2)
            probe = probe.to(device_type)
            for size in ([7, 11], [19, 23]):
                want = nnf.interpolate(probe, size=size, mode=mode, align_corners=align, antialias=antialias)
                got = fn(probe, size, None) if mode == "nearest" else fn(probe, size, align, None)
                if not torch.equal(got, want):
                    return None
    except (RuntimeError, TypeError):  # pragma: no cover - another torch: keep interpolate
        return None
    return fn


class CropResizer:
    """``resized_crop`` one sample at a time, its settings resolved once per batch.

    ``resizer(src, index, box)``: ``src`` (N, 3, H, W) uint8 (any strides), crop ``box``
    (top, left, height, width) of image ``index`` resized to ``relabel.output_size``; returns
    (1, 3, h, w) uint8, in whatever memory layout the resize gives (channels-last for an NHWC
    source on CPU).

    The values are exactly ``torchvision.transforms.v2.functional.resized_crop``'s (the recorded
    kernel; tested for every interpolation, with and without antialias, on CPU and with
    torchvision's GPU path): the same ``interpolate`` call on the same crop view, with
    torchvision's choice between resizing uint8 natively and resizing in float32 then rounding.
    What is left out is torchvision's last step, a reshape that copies the channels-last result
    into a contiguous CHW image (about 40% of the per-sample time at 224 px): callers write the
    result where it goes in one copy instead.
    """

    def __init__(self, relabel: RelabelConfig, device: torch.device) -> None:
        self.relabel = relabel
        self.size = list(relabel.output_size)
        self.interpolation = tvf.InterpolationMode(relabel.interpolation)
        smooth = self.interpolation in (tvf.InterpolationMode.BILINEAR, tvf.InterpolationMode.BICUBIC)
        self.mode = self.interpolation.value
        self.align_corners = False if smooth else None
        self.antialias = relabel.antialias and smooth
        self.native = not smooth or (
            device.type == "cpu"
            and _tv_native_uint8_on_cpu is not None
            and _tv_native_uint8_on_cpu(self.interpolation)
        )
        self.clamp = self.interpolation == tvf.InterpolationMode.BICUBIC
        self._direct = _direct_resize(self.mode, self.antialias, device.type)

    def _interpolate(self, x: torch.Tensor) -> torch.Tensor:
        if self._direct is None:
            return nnf.interpolate(
                x, size=self.size, mode=self.mode, align_corners=self.align_corners, antialias=self.antialias
            )
        if self.align_corners is None:
            return self._direct(x, self.size, None)
        return self._direct(x, self.size, self.align_corners, None)

    def __call__(self, src: torch.Tensor, index: int, box: tuple[int, int, int, int]) -> torch.Tensor:
        top, left, height, width = box
        x = src[index : index + 1, :, top : top + height, left : left + width]
        if [height, width] == self.size:
            return x  # torchvision returns the crop itself when no resize is needed
        if _tv_native_uint8_on_cpu is None:  # pragma: no cover - torchvision moved its helper
            return tvf.resized_crop(
                src[index],
                top,
                left,
                height,
                width,
                self.size,
                self.interpolation,
                antialias=self.relabel.antialias,
            )[None]
        if self.native:
            return self._interpolate(x)
        return self.round(self.resize_float(x))

    def resize_float(self, x: torch.Tensor) -> torch.Tensor:
        """The float32 resize of a (1, 3, h, w) uint8 crop, before torchvision's rounding."""
        return self._interpolate(x.float())

    def round(self, y: torch.Tensor) -> torch.Tensor:
        """torchvision's rounding of float resized pixels back to uint8 (any batch of them)."""
        if self.clamp:
            y = y.clamp_(min=0, max=255)
        return y.round_().to(torch.uint8)


def resize_crop(
    src: torch.Tensor, index: int, box: tuple[int, int, int, int], relabel: RelabelConfig
) -> torch.Tensor:
    """One sample of ``resized_crop`` (:class:`CropResizer`, for a single call)."""
    return CropResizer(relabel, src.device)(src, index, box)


def crop_kernel(
    images: torch.Tensor, arrays: Arrays, relabel: RelabelConfig, *, inplace: bool = False
) -> torch.Tensor:
    """uint8 (n, H, W, 3) source images -> uint8 (n, 3, h, w): ``resized_crop`` on each uint8 CHW image.

    Always a new tensor (the output has another shape), ``inplace`` or not. Each sample is
    :func:`resize_crop` (torchvision's values, tested).
    """
    del inplace
    out_h, out_w = relabel.output_size
    # NHWC-contiguous first (a no-op for the usual batch), so the memory layout that reaches
    # interpolate does not depend on how the caller sliced its batch.
    src = images.contiguous().permute(0, 3, 1, 2)
    boxes = np.asarray(arrays["crop"]).tolist()
    out = images.new_empty((len(boxes), 3, out_h, out_w))
    resize = CropResizer(relabel, images.device)
    for i, box in enumerate(boxes):
        out[i].copy_(resize(src, i, tuple(box))[0])
    return out


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


def cutout_kernel(
    x: torch.Tensor, arrays: Arrays, relabel: RelabelConfig, *, inplace: bool = False
) -> torch.Tensor:
    """(n, 3, h, w) -> same: fill each sample's rectangle with its colour.

    The rectangle is PIL's ``ImageDraw.rectangle([x1, y1, x2, y2])`` of the recipe, whose corners
    are inclusive: rows ``clip(cy - ch // 2, 0, h)`` to ``clip(cy + ch // 2, 0, h)`` inclusive,
    hence the ``+ 1`` on the exclusive end (and the same for columns).
    """
    del relabel
    n, out_h, out_w = x.shape[0], x.shape[-2], x.shape[-1]
    cy, cx, ch, cw = np.asarray(arrays["cutout_box"], dtype=np.int64).reshape(n, 4).T
    # Every sample's row and column range [start, end) and its colour.
    bounds = np.stack(
        [
            np.clip(cy - ch // 2, 0, out_h),
            np.minimum(np.clip(cy + ch // 2, 0, out_h) + 1, out_h),
            np.clip(cx - cw // 2, 0, out_w),
            np.minimum(np.clip(cx + cw // 2, 0, out_w) + 1, out_w),
        ],
        axis=1,
    )
    fill = np.asarray(arrays["cutout_fill"]).reshape(n, 3)
    if x.device.type != "cpu":
        return _cutout_masked(x, bounds, fill, inplace=inplace)
    # On the CPU a slice assignment per sample touches only the rectangles: at 128 x 224 px it
    # takes 3 ms where one mask over the whole batch takes 26 ms (one thread).
    out = x if inplace else x.clone()
    colours = torch.from_numpy(fill.astype(np.uint8)).to(x.dtype)
    for i, (y1, y2, x1, x2) in enumerate(bounds.tolist()):
        out[i, :, y1:y2, x1:x2] = colours[i].view(3, 1, 1)
    return out


def _cutout_masked(
    x: torch.Tensor, bounds: npt.NDArray[np.int64], fill: npt.NDArray[Any], *, inplace: bool
) -> torch.Tensor:
    """Cutout on a GPU: one mask for the whole batch and one upload, not a launch per sample."""
    packed = _tensor(np.concatenate([bounds, fill.astype(np.int64)], axis=1), np.int64, x.device)
    rows = torch.arange(x.shape[-2], device=x.device)
    cols = torch.arange(x.shape[-1], device=x.device)
    in_rows = (rows >= packed[:, 0:1]) & (rows < packed[:, 1:2])  # (n, h)
    in_cols = (cols >= packed[:, 2:3]) & (cols < packed[:, 3:4])  # (n, w)
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    filled = torch.where(mask, packed[:, 4:7].to(x.dtype)[:, :, None, None], x)
    return x.copy_(filled) if inplace else filled


#: The kernel of every registered augmentation, by its name. Read-only.
KERNELS: Mapping[str, KernelFn] = types.MappingProxyType(
    {"crop": crop_kernel, "cutout": cutout_kernel, "flip": flip_kernel, "cutmix": cutmix_kernel}
)


# --- the fixed step between the uint8 and the float stages --------------------------------------


def normalize_into(
    out: torch.Tensor, x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    """``out[...] = to_normalized_float(x)`` computed in ``out`` (float32, x's shape), the same arithmetic:
    the uint8 -> float32 copy is exact, then ``* (1/255)``, ``- mean``, ``/ std`` in place."""
    if x.dtype != torch.uint8 or out.dtype != torch.float32 or out.shape != x.shape:
        raise ValidationError(
            f"Expected a uint8 batch and a float32 output of its shape. Got {x.dtype} {tuple(x.shape)} -> "
            f"{out.dtype} instead."
        )
    out.copy_(x).mul_(1.0 / 255)
    tvf.normalize(out, mean=list(mean), std=list(std), inplace=True)


def to_normalized_float(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 -> float32: ``to_dtype(scale=True)`` (x * (1/255)) then ``normalize`` ((x - mean) / std)."""
    if x.dtype != torch.uint8:
        raise ValidationError(f"Expected a uint8 batch before normalization. Got {x.dtype} instead.")
    # to_dtype returns a new tensor for uint8 input, so normalizing it in place is the same
    # arithmetic without a second float batch (one allocation and pass fewer).
    return tvf.normalize(
        tvf.to_dtype(x, torch.float32, scale=True), mean=list(mean), std=list(std), inplace=True
    )
