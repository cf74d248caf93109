"""Random training views of in-memory images, drawn and applied by lpldstore's relabel kernels.

The teacher should be trained on (and the class statistics collected over) the same kind of
inputs that relabel feeds it: a random-resized crop and, where it keeps the label, a horizontal
flip. :class:`Views` draws those per batch as a pure function of ``(seed, epoch, batch)`` with
:func:`lpldstore.draw_params` and applies them with :func:`lpldstore.apply_params` (no CutMix), so
they are exactly relabel's augmentations, only without mixing.
"""

from __future__ import annotations

import dataclasses

import torch

import lpldstore
from lpld_pipeline.config import DataConfig
from lpld_pipeline.errors import DataError

__all__ = ["Views", "training_views"]

_UNIT = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Views:
    """Random-resized crops to ``size`` with ``crop_scale``, flipped with probability 1/2 if ``flip``."""

    size: int
    crop_scale: tuple[float, float]
    flip: bool
    seed: int

    @property
    def relabel_config(self) -> lpldstore.RelabelConfig:
        return lpldstore.RelabelConfig(
            output_size=(self.size, self.size),
            crop_scale=self.crop_scale,
            flip_prob=0.5 if self.flip else 0.0,
            mix="none",
            seed=self.seed,
        )

    def __call__(self, x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        """Views of ``x`` (float (N, 3, H, W) in [0, 1], as the datasets serve) for one batch."""
        pixels = (x * 255).round().clamp(0, 255)
        # The datasets serve uint8 pixels / 255, so this is exact; anything else would be re-quantized.
        if (pixels / 255 - x).abs().max() > 1e-5:
            raise DataError(
                "Expected images whose values are 8-bit pixels / 255 (as the datasets serve them) to draw "
                "training views. Got other values; turn off teacher.train_augment / data.augment for them."
            )
        images = pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        cfg = self.relabel_config
        params = lpldstore.draw_params(cfg, (x.shape[2], x.shape[3]), x.shape[0], epoch, batch)
        return lpldstore.apply_params(images, params, cfg, *_UNIT)


def training_views(data: DataConfig, seed: int) -> Views:
    """The views that ``data`` asks for: its crop scale, a flip only where flips preserve labels."""
    return Views(size=data.image_size, crop_scale=data.crop_scale, flip=data.flip_preserves_labels, seed=seed)
