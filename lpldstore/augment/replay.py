"""Replay: stored augmentation parameters applied to a batch of uint8 images.

Relabeling calls :func:`apply_params` on freshly drawn parameters, the loader calls it on
parameters read back from the store; both run the same code, so on the same device, dtype and
build the pixels are bit-identical. The replay order of one batch (``docs/augmentations.md``):

1. ``crop``: per sample, ``torchvision.transforms.v2.functional.resized_crop`` of the uint8 CHW
   source image to ``output_size`` (``relabel.interpolation``, ``relabel.antialias``); uint8 out.
2. ``cutout`` (optional, ImageNet-21K recipe): a uint8-coloured rectangle per sample.
3. ``flip``: ``horizontal_flip`` where the sample's flag is set.
4. uint8 -> float32 in [0, 1] (``to_dtype(scale=True)``), then ``normalize(mean, std)``.
5. ``cutmix``: ``x[:, :, t:b, l:r] = x[mix_index, :, t:b, l:r]`` on the normalized batch.

How it is computed, for speed (the values are those of the order above, bit for bit; tested):

- A batch with only the core augmentations (crop, flip, CutMix) takes a fused path. Each crop is
  resized (:func:`~lpldstore.augment.kernels.resize_crop`: torchvision's values without its
  re-layout copy) and written once, flipped where flagged, into a uint8 batch. CutMix then mixes
  the *uint8* batch: normalization maps each value of each channel on its own, so copying a
  region before it gives exactly the values of copying it after (and moves a quarter of the
  bytes). Last, one pass per sample converts, scales and normalizes into the float32 output
  (numpy on CPU, where its strided read is one pass; torch elsewhere), with the same float32
  operations as ``to_dtype`` and ``normalize``. On CUDA the float crops are resized per sample
  and rounded to uint8 batch-wise, as torchvision rounds each sample.
- Any other batch (an optional augmentation such as cutout) runs the registry's kernels in the
  order above, a few samples at a time on CPU so that their float conversion stays in cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torchvision.transforms.v2 import functional as tvf

from lpldstore.augment.kernels import KERNELS, CropResizer, normalize_into
from lpldstore.errors import ValidationError
from lpldstore.format.augmentations import PARAM_ARRAYS, REGISTRY, AugmentSpec
from lpldstore.format.params import AugmentParams, active, check_kernel_name, validate_params
from lpldstore.format.records import RelabelConfig

__all__ = ["apply_params"]

# Float bytes per chunk of samples that apply_params takes through the uint8 kernels and the
# normalization on CPU: a few MB stays in cache (about 20% faster at 224 px than whole batches).
_CHUNK_BYTES = 4 << 20


def apply_params(
    images: torch.Tensor,
    params: AugmentParams,
    relabel: RelabelConfig,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    override_kernel: bool = False,
    indices: npt.ArrayLike | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply a batch's parameters: uint8 (n, H, W, 3) images -> float32 (n, 3, h, w), on their device.

    With ``indices`` (n image numbers), ``images`` is the whole image set and sample ``i`` is
    ``images[indices[i]]``: the same result as ``apply_params(images[indices], ...)`` without
    gathering the source images first. ``out`` (a contiguous float32 (n, 3, h, w) tensor on the
    images' device) receives the result, which is returned. The input is never modified. Raises
    :class:`~lpldstore.errors.ConfigError` if ``relabel`` names another kernel (see
    :func:`check_kernel_name`) and :class:`~lpldstore.errors.ValidationError` if the parameters do
    not fit the images.
    """
    check_kernel_name(relabel.kernel, relabel.interpolation, override=override_kernel)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images)
        raise ValidationError(f"Expected a uint8 tensor (n, H, W, 3). Got {got} instead.")
    index = None if indices is None else _check_indices(indices, params.n, images.shape[0])
    if (images.shape[0] if index is None else len(index)) != params.n or images.shape[3] != 3:
        raise ValidationError(
            f"Expected images of shape ({params.n}, H, W, 3) for these params. Got {tuple(images.shape)} instead."
        )
    validate_params(params, (images.shape[1], images.shape[2]), relabel.output_size)
    shape = (params.n, 3, *relabel.output_size)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=images.device)
    elif out.dtype != torch.float32 or tuple(out.shape) != shape or out.device != images.device:
        raise ValidationError(
            f"Expected out as float32 {shape} on {images.device}. Got {out.dtype} {tuple(out.shape)} on {out.device}."
        )
    elif not out.is_contiguous():
        raise ValidationError("Expected a contiguous out tensor.")
    specs = active(params)
    if [s.name for s in specs] == _CORE:
        return _replay_core(images.contiguous(), index, params, relabel, mean, std, out)
    if index is not None:
        images = images.index_select(0, torch.from_numpy(index).to(images.device))
    return _replay_kernels(images, params, specs, relabel, mean, std, out)


_CORE = [s.name for s in REGISTRY.values() if not s.optional]


def _check_indices(indices: npt.ArrayLike, n: int, num_images: int) -> npt.NDArray[np.int64]:
    index = np.asarray(indices)
    if index.dtype.kind not in "iu" or index.shape != (n,):
        raise ValidationError(f"Expected indices of {n} integers. Got {index.dtype} {index.shape} instead.")
    if n and (index.min() < 0 or index.max() >= num_images):
        raise ValidationError(
            f"Expected indices in [0, {num_images}). Got values in [{index.min()}, {index.max()}] instead."
        )
    return index.astype(np.int64)


def _replay_core(
    images: torch.Tensor,
    index: npt.NDArray[np.int64] | None,
    params: AugmentParams,
    relabel: RelabelConfig,
    mean: Sequence[float],
    std: Sequence[float],
    out: torch.Tensor,
) -> torch.Tensor:
    """crop, flip, CutMix and normalization fused (module docstring); the registry order's values."""
    n, device = params.n, images.device
    out_h, out_w = relabel.output_size
    src = images.permute(0, 3, 1, 2)
    sources = range(n) if index is None else index.tolist()
    boxes = params.crops.tolist()
    flips = params.flips.tolist()
    resize = CropResizer(relabel, device)
    if _resize_natively(device):
        # The batch as NHWC uint8: a resized crop comes out channels-last, so writing it is a copy
        # of contiguous bytes; flipping it on the way is one more (torch.flip on 3 x h x w).
        batch = torch.empty((n, out_h, out_w, 3), dtype=torch.uint8)
        planes = batch.permute(0, 3, 1, 2)
        for i, (j, box, flip) in enumerate(zip(sources, boxes, flips, strict=True)):
            crop = resize(src, j, box)[0]
            planes[i].copy_(crop.flip(-1) if flip else crop)
    else:
        # On a GPU torchvision resizes uint8 in float32 and rounds each sample: resize each crop,
        # round and convert the whole batch at once (the same values, a fraction of the launches).
        crops = []
        for j, box in zip(sources, boxes, strict=True):
            top, left, height, width = box
            if resize.native:  # nearest: uint8 natively, as torchvision does
                crops.append(resize(src, j, box))
            elif (height, width) == (out_h, out_w):
                crops.append(src[j : j + 1, :, top : top + height, left : left + width].float())
            else:
                crops.append(resize.resize_float(src[j : j + 1, :, top : top + height, left : left + width]))
        stacked = torch.cat(crops) if crops else torch.empty((0, 3, out_h, out_w), device=device)
        if stacked.dtype != torch.uint8:
            stacked = resize.round(stacked)
        mask = torch.from_numpy(np.asarray(params.flips, dtype=bool).copy()).to(device, non_blocking=True)
        planes = torch.where(mask.view(-1, 1, 1, 1), stacked.flip(-1), stacked)
        batch = planes.permute(0, 2, 3, 1)
    top, left, bottom, right = params.mix_box
    if n and bottom > top and right > left:
        # CutMix on the uint8 batch (normalization is per value and channel: the same result as
        # mixing the normalized batch), in the layout the batch is stored in. The gathered
        # region is a copy taken before any write.
        partners = torch.from_numpy(params.mix_index.astype(np.int64)).to(device, non_blocking=True)
        if batch.is_contiguous():
            region = batch[:, top:bottom, left:right]
        else:
            region = planes[:, :, top:bottom, left:right]
        region.copy_(region.index_select(0, partners))
    return _normalized(planes, mean, std, out)


def _resize_natively(device: torch.device) -> bool:
    """Whether crops are resized (and flipped) one by one into a uint8 batch: on CPU, where
    torchvision resizes uint8 natively; elsewhere the float crops are rounded batch-wise."""
    return device.type == "cpu"


def _normalized(
    planes: torch.Tensor, mean: Sequence[float], std: Sequence[float], out: torch.Tensor
) -> torch.Tensor:
    """uint8 (n, 3, h, w) (any strides) -> ``out`` (float32 contiguous): ``(x * (1/255) - mean) / std``
    in float32, the operations of ``to_dtype(scale=True)`` and ``normalize``."""
    n = planes.shape[0]
    if planes.device.type != "cpu":
        return tvf.normalize(out.copy_(planes).mul_(1.0 / 255), mean=list(mean), std=list(std), inplace=True)
    # About 1 MB of floats at a time (one sample at 224 px, 20 at 64 px): it stays in cache for
    # the two in-place passes; numpy reads the NHWC bytes in CHW order in the conversion's pass.
    src, dst = planes.numpy(), out.numpy()
    scale = np.float32(1.0 / 255)
    mu = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    sigma = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    rows = max(1, (1 << 20) // max(1, dst[:1].nbytes))
    for start in range(0, n, rows):
        part = dst[start : start + rows]
        np.multiply(src[start : start + rows], scale, out=part)
        part -= mu
        part /= sigma
    return out


def _replay_kernels(
    images: torch.Tensor,
    params: AugmentParams,
    specs: list[AugmentSpec],
    relabel: RelabelConfig,
    mean: Sequence[float],
    std: Sequence[float],
    out: torch.Tensor,
) -> torch.Tensor:
    """Every registered kernel in replay order (batches with optional augmentations)."""
    arrays = params.to_arrays()
    uint8_specs = [s for s in specs if s.stage != "float"]
    float_specs = [s for s in specs if s.stage == "float"]
    n = params.n
    rows = n
    if images.device.type == "cpu" and all(a.scope == "sample" for s in uint8_specs for a in s.arrays):
        # Sample-wise kernels (tested: a sample's output does not depend on the others) run a few
        # samples at a time, so their float conversion and normalization stay in the CPU cache.
        out_h, out_w = relabel.output_size
        rows = max(1, _CHUNK_BYTES // (3 * out_h * out_w * 4))
    for start in range(0, n, rows) if n else [0]:
        part = slice(start, min(n, start + rows))
        sub = {k: (v[part] if PARAM_ARRAYS[k].scope == "sample" else v) for k, v in arrays.items()}
        x = images[part]
        # Every kernel returns a new tensor, so after the first one the batch is ours to modify.
        owned = False
        for spec in uint8_specs:
            x, owned = KERNELS[spec.name](x, sub, relabel, inplace=owned), True
        normalize_into(out[part], x, tuple(mean), tuple(std))
    for spec in float_specs:
        out = KERNELS[spec.name](out, arrays, relabel, inplace=True)
    return out
