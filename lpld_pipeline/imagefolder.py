"""Read an image set published as an ImageFolder (class folders of JPEG/PNG files) for relabel.

Released distilled sets (SRe2L, CDA, LPLD, ...) are ImageFolder trees. The classes are the
sub-folders of the root sorted by name, and the files of a class are taken in the order
torchvision's ``ImageFolder`` takes them (a sorted walk of the class folder), so label ``i`` here
is label ``i`` there. Only ``.jpg``, ``.jpeg`` and ``.png`` files are images; anything else
inside the tree is refused by name rather than skipped, so that nothing is silently left out
(hidden files, whose names start with a dot, are ignored). Every image is decoded to RGB.

The store needs one image size. ``image_size`` 0 requires every image to have the same size and
uses it; ``image_size`` N resizes each image's shorter side to N (bilinear, with antialiasing)
and crops the centre N x N square, as torchvision's ``Resize(N)`` then ``CenterCrop(N)`` do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lpld_pipeline.errors import DataError
from lpld_pipeline.synthesize import SynthesisResult

__all__ = ["IMAGE_EXTENSIONS", "is_image_folder", "read_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _visible(name: str) -> bool:
    return not name.startswith(".")


def is_image_folder(root: str | Path) -> bool:
    """Whether ``root`` is a directory with at least one visible sub-folder (a class folder)."""
    root = Path(root)
    return root.is_dir() and any(p.is_dir() and _visible(p.name) for p in root.iterdir())


def _class_files(folder: Path) -> list[Path]:
    files: list[Path] = []
    for top, dirs, names in sorted(os.walk(folder, followlinks=True)):
        dirs[:] = [d for d in dirs if _visible(d)]
        for name in sorted(names):
            if not _visible(name):
                continue
            path = Path(top) / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"Expected only JPEG or PNG images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders. "
                    f"Got {str(path.relative_to(folder.parent))!r}; move it out of the image folder."
                )
            files.append(path)
    return files


def _centre_square(image: object, size: int) -> object:
    from PIL import Image

    assert isinstance(image, Image.Image)
    w, h = image.size
    # torchvision's Resize(int): the shorter side becomes `size`, the longer keeps the aspect ratio.
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    # torchvision's CenterCrop rounds the offsets half to even.
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def read_image_folder(root: str | Path, *, image_size: int = 0) -> SynthesisResult:
    """The images of the ImageFolder at ``root`` as uint8 ``(N, H, W, 3)``, with labels and class names.

    ``indices`` are each image's position within its class. Raises :class:`DataError` (naming
    the file or folder) for a missing root, a root without class folders, a file beside the class
    folders, a non-image file, an image that does not decode, an empty class folder, and (with
    ``image_size`` 0) images of different sizes.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"Expected an image folder (class folders of JPEG/PNG images) at {str(root)!r}. Got no such directory."
        )
    if image_size < 0:
        raise DataError(f"Expected image_size >= 0 (0: the images' own size). Got {image_size} instead.")
    entries = sorted(p for p in root.iterdir() if _visible(p.name))
    stray = [p.name for p in entries if not p.is_dir()]
    if stray:
        raise DataError(
            f"Expected only class folders in the image folder {root.name!r}. Got the file {stray[0]!r}"
            f"{f' and {len(stray) - 1} more' if len(stray) > 1 else ''}; move files into their class folder."
        )
    classes = [p for p in entries if p.is_dir()]
    if not classes:
        raise DataError(f"Expected class folders in the image folder {root.name!r}. Got none.")
    images: list[np.ndarray] = []
    labels: list[int] = []
    indices: list[int] = []
    first: tuple[str, tuple[int, int]] | None = None
    for label, folder in enumerate(classes):
        files = _class_files(folder)
        if not files:
            raise DataError(
                f"Expected at least one image in every class folder. Got none in {folder.name!r}; remove the "
                "folder or add its images."
            )
        for index, path in enumerate(files):
            name = str(path.relative_to(root))
            try:
                with Image.open(path) as opened:
                    image = opened.convert("RGB")
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(
                    f"Expected a readable JPEG or PNG image. Got {name!r}, which fails to decode: {exc}"
                ) from exc
            if image_size:
                image = _centre_square(image, image_size)  # type: ignore[assignment]
            else:
                size = (image.height, image.width)
                if first is None:
                    first = (name, size)
                elif size != first[1]:
                    raise DataError(
                        f"Expected images of one size (or image_size > 0 to resize them). Got {first[0]!r} of "
                        f"{first[1][0]}x{first[1][1]} and {name!r} of {size[0]}x{size[1]}."
                    )
            images.append(np.asarray(image, dtype=np.uint8))
            labels.append(label)
            indices.append(index)
    return SynthesisResult(
        np.stack(images),
        np.asarray(labels, dtype=np.int64),
        np.asarray(indices, dtype=np.int64),
        tuple(p.name for p in classes),
    )
