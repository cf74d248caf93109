"""Per-group synthesis augmentation: pure draws and one batched kernel.

Every random number is a pure function of ``(seed, key, iteration, slot)`` through a counter-based
hash (SplitMix64), so a group draws the same crop, flip and jitter whether it is optimized alone or
packed with other groups, on any device and in any order; no generator state is carried.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

import lpldstore

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_CROP_ATTEMPTS = 10  # as torchvision's RandomResizedCrop
_RRC_SLOTS = 2 * _CROP_ATTEMPTS
_SLOTS = _RRC_SLOTS + 5
_INIT_ITERATION = 2**32 - 1  # a counter value that augmentation draws never reach


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + _GOLDEN).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def hash_keys(seed: int, keys: np.ndarray, iteration: int) -> np.ndarray:
    """One uint64 per row of ``keys`` (int64 ``(G, K)``), mixing seed, key columns and iteration."""
    keys = np.asarray(keys, dtype=np.int64).reshape(len(keys), -1)
    h = _splitmix(np.full(len(keys), seed, dtype=np.int64).astype(np.uint64))
    for col in range(keys.shape[1]):
        h = _splitmix(h ^ keys[:, col].astype(np.uint64))
    return _splitmix(h ^ np.uint64(iteration))


def uniforms(seed: int, keys: np.ndarray, iteration: int, n: int) -> np.ndarray:
    """``(G, n)`` float64 uniforms in [0, 1), a pure function of the arguments."""
    base = hash_keys(seed, keys, iteration)
    slots = _splitmix(np.arange(n, dtype=np.uint64))
    bits = _splitmix(base[:, None] ^ slots[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def init_seed(seed: int, key: tuple[int, ...]) -> int:
    """A torch seed for a group's initial pixels, apart from every augmentation draw."""
    return int(hash_keys(seed, np.asarray([key], dtype=np.int64), _INIT_ITERATION)[0] >> np.uint64(1))


@dataclasses.dataclass(frozen=True)
class AugParams:
    """One draw per group: crop box ``(top, left, height, width)`` in pixels, flip and roll shifts."""

    boxes: np.ndarray  # int64 (G, 4)
    flips: np.ndarray  # bool (G,)
    shifts: np.ndarray  # int64 (G, 2), (dy, dx)


def draw_params(
    seed: int,
    keys: np.ndarray,
    iteration: int,
    *,
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip: bool,
    jitter: int,
    symmetric_jitter: bool = False,
) -> AugParams:
    """Random-resized-crop boxes, flips and jitter for each group.

    Box sizes follow the project's one crop-size rule (:func:`lpldstore.crop_box_sizes`:
    torchvision's ``RandomResizedCrop`` with its ratio-clamped fallback), fed with this module's
    counter-based uniforms; a box is placed at ``floor(u * (H - h + 1))``, or centred where no
    attempt fitted. The jitter is a cyclic shift by ``[0, jitter]`` pixels per axis, or by
    ``[-jitter, jitter]`` with ``symmetric_jitter``.
    """
    u = uniforms(seed, keys, iteration, _SLOTS)
    height, width = size
    # Slots 2a and 2a + 1 are attempt a's area and log-ratio draws; 20 and 21 place the box.
    h, w, found = lpldstore.crop_box_sizes(u[:, 0:_RRC_SLOTS:2], u[:, 1:_RRC_SLOTS:2], size, scale, ratio)
    top = np.where(found, np.floor(u[:, 20] * (height - h + 1)), (height - h) // 2).astype(np.int64)
    left = np.where(found, np.floor(u[:, 21] * (width - w + 1)), (width - w) // 2).astype(np.int64)
    boxes = np.stack([top, left, h, w], axis=1).astype(np.int64)
    flips = (u[:, 22] < 0.5) if flip else np.zeros(len(u), dtype=bool)
    low, span = (-jitter, 2 * jitter + 1) if symmetric_jitter else (0, jitter + 1)
    shifts = (low + np.floor(u[:, 23:25] * span)).astype(np.int64)
    return AugParams(boxes=boxes, flips=flips, shifts=shifts)


def apply_params(x: torch.Tensor, params: AugParams, group_of: torch.Tensor) -> torch.Tensor:
    """Crop-resize (bilinear), flip, then roll each sample by its group's parameters.

    One ``grid_sample`` for the whole batch; each output sample depends only on its
    own input sample and its group's parameters.
    """
    n, _, height, width = x.shape
    dev, dt = x.device, x.dtype
    box = torch.as_tensor(params.boxes, dtype=torch.float64)
    top, left, h, w = box.unbind(1)
    sign = 1.0 - 2.0 * torch.as_tensor(params.flips, dtype=torch.float64)
    # Every per-group number in one host tensor, sent in one copy: theta (6), the clamp box (4)
    # and the shifts (2, exact in float64). Pinned and asynchronous on a GPU, so that the
    # iteration's host work does not wait for the device to drain.
    packed = torch.zeros(len(box), 12, dtype=torch.float64)
    # Affine map of output [-1, 1] coordinates onto the crop (align_corners=False pixel centres).
    packed[:, 0] = sign * w / width
    packed[:, 2] = (2 * left + w) / width - 1
    packed[:, 4] = h / height
    packed[:, 5] = (2 * top + h) / height - 1
    # Clamp sampling to the crop's outer pixel centres, as cropping before resizing does; otherwise
    # the border rows would blend in pixels from outside the crop.
    packed[:, 6] = (2 * left + 1) / width - 1
    packed[:, 7] = (2 * top + 1) / height - 1
    packed[:, 8] = (2 * (left + w) - 1) / width - 1
    packed[:, 9] = (2 * (top + h) - 1) / height - 1
    packed[:, 10:12] = torch.as_tensor(params.shifts, dtype=torch.float64)
    if dev.type == "cuda":
        packed = packed.pin_memory()
    per_sample = packed.to(dev, non_blocking=True)[group_of]
    theta = per_sample[:, :6].to(dt).view(n, 2, 3)
    grid = F.affine_grid(theta, [n, x.shape[1], height, width], align_corners=False)
    lo, hi = (per_sample[:, a : a + 2].to(dt)[:, None, None, :] for a in (6, 8))
    grid = torch.maximum(torch.minimum(grid, hi), lo)
    # Rolling the output equals rolling the sampling grid, which carries no gradient: the jitter
    # costs an index on a small tensor instead of a gather (and a scatter in backward) on images.
    shifts = per_sample[:, 10:12].long()
    rows = (torch.arange(height, device=dev)[None, :] - shifts[:, :1]) % height  # (N, H)
    cols = (torch.arange(width, device=dev)[None, :] - shifts[:, 1:]) % width  # (N, W)
    grid = grid[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
