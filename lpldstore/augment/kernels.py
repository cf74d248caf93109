"""The torch kernels that apply stored augmentation parameters to pixels (see ``lpldstore.augment``).

A kernel maps (a batch tensor, the stored arrays of its batch, the relabel config) to a new tensor
and never writes into its input, unless called with ``inplace=True`` by a caller that owns the
tensor (``apply_params`` for its intermediates: each pass over a 224 px float batch that is not
allocated and copied again saves tens of milliseconds per batch on CPU); the values are the same
either way. :data:`KERNELS` holds one kernel per augmentation of
:data:`lpldstore.format.augmentations.REGISTRY`, by the same name.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from torchvision.transforms.v2 import functional as tvf

from lpldstore.errors import ValidationError
from lpldstore.format.records import RelabelConfig

__all__ = ["KERNELS", "KernelFn", "normalize_into", "to_normalized_float"]

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
    out_h, out_w = x.shape[-2:]
    out = x if inplace else x.clone()
    fill = _tensor(arrays["cutout_fill"], np.uint8, x.device).to(x.dtype)
    for i, (cy, cx, ch, cw) in enumerate(np.asarray(arrays["cutout_box"]).tolist()):
        y1, y2 = min(max(cy - ch // 2, 0), out_h), min(max(cy + ch // 2, 0), out_h)
        x1, x2 = min(max(cx - cw // 2, 0), out_w), min(max(cx + cw // 2, 0), out_w)
        out[i, :, y1 : min(y2 + 1, out_h), x1 : min(x2 + 1, out_w)] = fill[i].view(3, 1, 1)
    return out


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
