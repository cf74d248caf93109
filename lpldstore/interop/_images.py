"""The distilled images of a peer label directory: a torchvision ``ImageFolder``, in its order.

Peer code indexes images by their position in ``ImageFolder`` (classes sorted by folder name,
files sorted within a class); the store keeps that order, so stored indices are the peer's ids.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lpldstore.errors import InteropError

__all__ = ["ImageSet", "load_image_folder"]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ImageSet:
    """Images uint8 (N, H, W, 3), their class index (N,), class folder names and file paths."""

    pixels: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    classes: tuple[str, ...]
    paths: tuple[Path, ...]

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


def load_image_folder(root: str | os.PathLike[str]) -> ImageSet:
    """Read an ImageFolder (``root/<class>/<image>``) into memory, in ImageFolder's order.

    All images must have one size: a store holds them as one (N, H, W, 3) array.
    """
    from PIL import Image
    from torchvision.datasets import ImageFolder

    path = Path(root)
    if not path.is_dir():
        raise InteropError(f"Expected an ImageFolder directory of the distilled images at {path}. Got none.")
    try:
        folder = ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError) as exc:
        raise InteropError(f"{path}: expected an ImageFolder (one folder per class). {exc}") from exc
    pixels: list[npt.NDArray[np.uint8]] = []
    for file, _ in folder.samples:
        with Image.open(file) as img:
            pixels.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    shapes = sorted({p.shape for p in pixels})
    if len(shapes) != 1:
        raise InteropError(
            f"{path}: expected images of one size (a store holds an (N, H, W, 3) array). Got sizes "
            f"{[s[:2] for s in shapes[:5]]}{' ...' if len(shapes) > 5 else ''}. Resize them first."
        )
    return ImageSet(
        pixels=np.stack(pixels),
        labels=np.asarray([t for _, t in folder.samples], dtype=np.int64),
        classes=tuple(folder.classes),
        paths=tuple(Path(f) for f, _ in folder.samples),
    )
