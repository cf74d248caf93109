"""The distilled images of a peer label directory: a torchvision ``ImageFolder``, in its order.

Peer code indexes images by their position in ``ImageFolder`` (classes sorted by folder name,
files sorted within a class); the store keeps that order, so stored indices are the peer's ids.
:func:`write_image_folder` writes a store's images back as such a folder (lossless PNG), named
so that ``ImageFolder``'s order is the store's order.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from lpldstore.errors import InteropError

__all__ = ["ImageSet", "class_folders", "load_image_folder", "write_image_folder"]


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


_SAFE_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def class_folders(num_classes: int, class_names: Sequence[str] | None) -> tuple[str, ...]:
    """Folder names whose sorted order is the class order: the class names when they already sort
    that way and are plain file names (ImageNet's WordNet ids do), else zero-padded class indices."""
    if class_names is not None:
        names = tuple(class_names)
        if list(names) == sorted(set(names)) and all(_SAFE_FOLDER.fullmatch(n) for n in names):
            return names
    width = len(str(max(num_classes - 1, 0)))
    return tuple(f"{c:0{width}d}" for c in range(num_classes))


def write_image_folder(
    pixels: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    folders: Sequence[str],
    out: Path,
    *,
    progress: bool = False,
) -> int:
    """Write ``out/<class folder>/<image index>.png``; ImageFolder then lists them in store order.

    Needs the images stored class by class (labels never decreasing): ImageFolder orders by class
    first, and the peers' label files name images by their ImageFolder position.
    """
    from PIL import Image

    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (np.diff(labels) < 0).any():
        first = int(np.flatnonzero(np.diff(labels) < 0)[0])
        raise InteropError(
            "Expected the store's images class by class (the order of an ImageFolder, whose positions the peer "
            f"label files use as image ids). Got image {first + 1} of class {int(labels[first + 1])} after one of "
            f"class {int(labels[first])}. Export the labels without --images and keep the images as they are."
        )
    missing = sorted(set(range(len(folders))) - set(np.unique(labels).tolist()))
    if missing:
        raise InteropError(
            f"Expected at least one image of every class (an ImageFolder has no empty class folders, so the "
            f"class ids after them would shift). Got none of class {missing[0]} ({len(missing)} empty classes). "
            "Export the labels without --images."
        )
    width = len(str(max(len(pixels) - 1, 0)))
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(len(pixels)), desc="export images", unit="image", disable=not progress):
        Image.fromarray(np.ascontiguousarray(pixels[i])).save(
            out / folders[int(labels[i])] / f"{i:0{width}d}.png"
        )
    return len(pixels)
