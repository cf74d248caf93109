"""Measurements of a synthetic image set against its teacher: how well it matches, how diverse it is.

:func:`bn_distances` is the synthesis loss's BN term on a finished set: for each class, the
moments of every BN layer's input over the class's images, compared with that class's statistics
and with the teacher's global running statistics, ``sum_l w_l (||mu_t - mu_x||_2 + ||var_t -
var_x||_2)`` with ``w_1`` the first-BN multiplier. Statistics collected under the training
augmentation describe augmented views, so the moments are then taken over ``draws`` random views
of every image (:class:`~lpld_pipeline.views.Views`), which is what synthesis matches on average.
Class-wise synthesis has converged when its images sit much closer to their own class's
statistics than to the global ones, as real images of the class do.

:func:`within_class_cosine` is LPLD's within-class diversity measure (its Table 1): the mean
pairwise cosine similarity of the teacher's penultimate features between two different images of
one class. Lower means more diverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lpld_pipeline.bnstats import ClassBNStats
from lpld_pipeline.errors import ConfigError
from lpld_pipeline.synthesize import GLOBAL, _BNMatch
from lpld_pipeline.teacher import Teacher
from lpld_pipeline.views import Views

__all__ = ["BNDistances", "bn_distances", "penultimate_features", "within_class_cosine"]


@dataclasses.dataclass(frozen=True)
class BNDistances:
    """Per class (in ``classes`` order): the BN distance to the class's own and to the global statistics."""

    classes: tuple[int, ...]
    own: np.ndarray
    global_: np.ndarray

    def summary(self) -> dict[str, float]:
        return {
            "own_mean": float(self.own.mean()),
            "global_mean": float(self.global_.mean()),
            "own_closer_fraction": float((self.own < self.global_).mean()),
        }


def _as_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ConfigError(f"Expected uint8 images (N, H, W, 3). Got {images.dtype} {images.shape} instead.")
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(255)


@torch.no_grad()
def bn_distances(
    teacher: Teacher,
    stats: ClassBNStats,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    first_bn_multiplier: float = 10.0,
    views: Views | None = None,
    draws: int = 8,
    device: torch.device | None = None,
) -> BNDistances:
    """The BN distances of each class's images (uint8 (N, H, W, 3)) to its own and the global statistics.

    With ``views``, the moments are over ``draws`` views of each image (draw ``d`` of class ``c``
    is views' epoch ``d``, batch ``c``); without, over the images as they are.
    """
    device = device or torch.device("cpu")
    teacher = teacher.to(device).eval()
    classes = tuple(int(c) for c in np.unique(labels))
    plain = _as_input(images, device)
    out: dict[str, list[float]] = {"own": [], "global": []}
    match = _BNMatch(teacher.model, first_bn_multiplier)
    try:
        for c in classes:
            xc = plain[torch.from_numpy(labels == c).to(device)]
            if views is not None:
                xc = torch.cat([views(xc, d, c) for d in range(draws)])
            xc = teacher.normalize(xc)
            match.group_of = torch.zeros(len(xc), dtype=torch.long, device=device)
            match.counts = torch.ones(1, device=device) * len(xc)
            for key, target in (("own", c), ("global", GLOBAL)):
                match.set_targets(stats, [target], device, torch.float32)
                match.terms.clear()
                teacher.model(xc)
                out[key].append(float(torch.stack(match.terms).sum()))
    finally:
        match.group_of = None
        match.remove()
    return BNDistances(classes, np.asarray(out["own"]), np.asarray(out["global"]))


def _classifier(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"Expected a model with a final nn.Linear classifier. Got {type(model).__name__}.")
    return linears[-1]


@torch.no_grad()
def penultimate_features(
    teacher: Teacher, images: np.ndarray, *, batch_size: int = 256, device: torch.device | None = None
) -> torch.Tensor:
    """The input of the teacher's last linear layer for every image, float32 (N, D)."""
    device = device or torch.device("cpu")
    teacher = teacher.to(device).eval()
    captured: list[torch.Tensor] = []
    handle = _classifier(teacher.model).register_forward_pre_hook(
        lambda _m, inputs: captured.append(inputs[0].detach().float().cpu())
    )
    try:
        x = _as_input(images, device)
        for start in range(0, len(x), batch_size):
            teacher(x[start : start + batch_size])
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.zeros(0)


def within_class_cosine(features: torch.Tensor, labels: Sequence[int] | np.ndarray) -> dict[int, float]:
    """Per class, the mean cosine similarity of its features over all pairs of different images."""
    labels = np.asarray(labels)
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    out: dict[int, float] = {}
    for c in np.unique(labels).tolist():
        f = unit[torch.from_numpy(labels == c)]
        n = len(f)
        if n < 2:
            raise ConfigError(
                f"Expected at least two images of class {c} for a pairwise similarity. Got {n}."
            )
        sims = f @ f.T
        out[int(c)] = float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))
    return out
