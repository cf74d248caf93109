"""Replay: stored augmentation parameters applied to a batch of uint8 images.

Relabeling calls :func:`apply_params` on freshly drawn parameters, the loader calls it on
parameters read back from the store; both run the same kernels, so on the same device, dtype and
build the pixels are bit-identical. The replay order of one batch (``docs/augmentations.md``):

1. ``crop``: per sample, ``torchvision.transforms.v2.functional.resized_crop`` of the uint8 CHW
   source image to ``output_size`` (``relabel.interpolation``, ``relabel.antialias``); uint8 out.
2. ``cutout`` (optional, ImageNet-21K recipe): a uint8-coloured rectangle per sample.
3. ``flip``: ``horizontal_flip`` where the sample's flag is set.
4. uint8 -> float32 in [0, 1] (``to_dtype(scale=True)``), then ``normalize(mean, std)``.
5. ``cutmix``: ``x[:, :, t:b, l:r] = x[mix_index, :, t:b, l:r]`` on the normalized batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lpldstore.augment.kernels import KERNELS, normalize_into
from lpldstore.errors import ValidationError
from lpldstore.format.augmentations import PARAM_ARRAYS
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
    specs = active(params)
    uint8_specs = [s for s in specs if s.stage != "float"]
    float_specs = [s for s in specs if s.stage == "float"]
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
        sub = {k: (v[part] if PARAM_ARRAYS[k].scope == "sample" else v) for k, v in arrays.items()}
        x = images[part]
        # Every kernel returns a new tensor, so after the first one the batch is ours to modify.
        owned = False
        for spec in uint8_specs:
            x, owned = KERNELS[spec.name](x, sub, relabel, inplace=owned), True
        if out is None:
            out = torch.empty((n, *x.shape[1:]), dtype=torch.float32, device=x.device)
        normalize_into(out[part], x, tuple(mean), tuple(std))
    assert out is not None
    for spec in float_specs:
        out = KERNELS[spec.name](out, arrays, relabel, inplace=True)
    return out
