"""Real training data: the built-in digits set and ImageFolder trees.

Datasets yield ``(image, label)`` with ``image`` a float32 tensor (3, H, W) in [0, 1]; the teacher
normalizes. The digits set is scikit-learn's bundled 1,797 handwritten 8x8 digits (10 classes,
installed with the package, no download), upsampled to RGB ``image_size`` squares and split
deterministically (stratified, 80/20, fixed seed).

Training augmentation (``DataConfig.augment``) of an ImageFolder is torchvision's
random-resized crop of the full image, plus a flip where flips preserve labels, in the dataset,
as the reference squeeze does. The digits are all ``image_size`` squares in memory: their views
are drawn per batch by the stage that needs them, with lpldstore's kernels
(:class:`lpld_pipeline.views.Views`), so :func:`build_dataset` serves them plain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lpld_pipeline.config import DataConfig
from lpld_pipeline.errors import DataError

__all__ = ["ImageDataset", "build_dataset", "class_names_of", "load_digits_images"]

_DIGITS_SPLIT_SEED = 0
_DIGITS_VAL_FRACTION = 0.2


def load_digits_images(image_size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Digits as uint8 RGB images ``(N, image_size, image_size, 3)`` and int64 labels ``(N,)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "val"):
        raise DataError(f"Expected split 'train' or 'val'. Got {split!r} instead.")
    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float32) / 16.0  # sklearn's digits are 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    idx_train, idx_val = train_test_split(
        np.arange(len(labels)),
        test_size=_DIGITS_VAL_FRACTION,
        random_state=_DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    idx = np.sort(idx_train if split == "train" else idx_val)
    x = torch.from_numpy(pixels[idx])[:, None]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().numpy(), labels[idx]


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """In-memory uint8 images ``(N, H, W, 3)`` with int labels, served as float CHW in [0, 1]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> None:
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise DataError(
                f"Expected uint8 images of shape (N, H, W, 3). Got {images.dtype} {images.shape}."
            )
        if labels.shape != (images.shape[0],):
            raise DataError(f"Expected {images.shape[0]} labels. Got shape {labels.shape} instead.")
        self.images = images
        self.labels = labels.astype(np.int64)
        self.classes = list(class_names)
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div_(255.0)
        return x, int(self.labels[index])


def _imagefolder(config: DataConfig, split: str) -> Dataset[tuple[torch.Tensor, int]]:
    from torchvision import datasets, transforms

    if not config.root:
        raise DataError(
            "Expected data.root to name an ImageFolder directory for data.name='imagefolder'. "
            "Got an empty root; pass e.g. --set data.root=/datasets/imagenet."
        )
    root = Path(config.root)
    folder = root / split if (root / split).is_dir() else root
    if not folder.is_dir():
        raise DataError(f"Expected an ImageFolder directory at {str(folder)!r}. Got nothing there.")
    size = config.image_size
    tf: Any
    if config.augment and split == "train":
        steps: list[Any] = [transforms.RandomResizedCrop(size, scale=config.crop_scale)]
        if config.flip_preserves_labels:
            steps.append(transforms.RandomHorizontalFlip())
        tf = transforms.Compose([*steps, transforms.ToTensor()])
    elif config.eval_transform == "resize_center_crop":
        tf = transforms.Compose(
            [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size), transforms.ToTensor()]
        )
    elif config.eval_transform == "resize":
        tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    else:
        tf = transforms.Compose([_RequireSize(size), transforms.ToTensor()])
    try:
        dataset: Dataset[tuple[torch.Tensor, int]] = datasets.ImageFolder(str(folder), transform=tf)
    except FileNotFoundError as exc:
        raise DataError(f"No images found under {str(folder)!r}: {exc}") from exc
    return dataset


class _RequireSize:
    """``eval_transform='none'``: the images are used as they are, so they must have the size."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Any) -> Any:
        if tuple(image.size) != (self.size, self.size):
            raise DataError(
                f"Expected {self.size}x{self.size} images with eval_transform='none' (the Tiny-ImageNet "
                f"recipe uses its 64 px images as they are). Got an image of {image.size[0]}x{image.size[1]}; "
                "set data.eval_transform to 'resize' or 'resize_center_crop'."
            )
        return image


def build_dataset(config: DataConfig, split: str = "train") -> Dataset[tuple[torch.Tensor, int]]:
    """The dataset that ``config`` names; it has ``classes`` and ``targets`` like ImageFolder."""
    if config.name == "digits":
        images, labels = load_digits_images(config.image_size, split)
        return ImageDataset(images, labels, tuple(str(i) for i in range(10)))
    return _imagefolder(config, split)


def class_names_of(dataset: Dataset[tuple[torch.Tensor, int]]) -> tuple[str, ...]:
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise DataError("Expected a dataset with a non-empty 'classes' list (as ImageFolder has).")
    return tuple(str(c) for c in classes)
