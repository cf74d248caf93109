"""The study's measurements: BN distances to own and global statistics, within-class cosine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lpld_pipeline import ConfigError, ImageDataset, compute_class_stats
from lpld_pipeline.diagnostics import bn_distances, penultimate_features, within_class_cosine
from lpld_pipeline.views import Views

from ._stores import one_thread  # noqa: F401  (autouse fixture)
from .conftest import make_tiny_teacher


def test_a_set_is_at_distance_zero_from_its_own_exact_statistics() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 10, 10, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(3), 4)
    teacher = make_tiny_teacher(num_classes=3)
    stats = compute_class_stats(teacher, ImageDataset(images, labels, ("a", "b", "c")), image_size=10)
    d = bn_distances(teacher, stats, images, labels)
    assert d.classes == (0, 1, 2)
    np.testing.assert_allclose(d.own, 0.0, atol=1e-3)
    assert (d.global_ > 1.0).all()  # the random running statistics are far away
    assert d.summary()["own_closer_fraction"] == 1.0
    # Under views the moments are of other pixels: no longer zero, still a pure function.
    views = Views(size=10, crop_scale=(0.3, 1.0), flip=False, seed=0)
    a = bn_distances(teacher, stats, images, labels, views=views, draws=2)
    b = bn_distances(teacher, stats, images, labels, views=views, draws=2)
    assert (a.own > 1e-2).all()
    np.testing.assert_array_equal(a.own, b.own)


def test_within_class_cosine() -> None:
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    sims = within_class_cosine(features[:4], [0, 0, 1, 1])
    assert sims == pytest.approx({0: 1.0, 1: 0.0})
    with pytest.raises(ConfigError, match="at least two images of class 2"):
        within_class_cosine(features, [0, 0, 1, 1, 2])
    teacher = make_tiny_teacher(num_classes=3)
    images = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    f = penultimate_features(teacher, images, batch_size=2)
    assert f.shape == (5, 16)  # width 4: the last stage has 4 x 4 channels
    same = within_class_cosine(penultimate_features(teacher, images[[0, 0, 0]]), [0, 0, 0])
    assert same[0] == pytest.approx(1.0)
