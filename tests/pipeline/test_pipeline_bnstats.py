from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lpld_pipeline import (
    ArtifactError,
    ClassMoments,
    ConfigError,
    ImageDataset,
    batchnorm_layers,
    compute_class_stats,
    load_class_stats,
    save_class_stats,
)

from .conftest import make_tiny_teacher


def _bn_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of every BN layer for ``x``, captured directly (no class bookkeeping)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0].detach()))
        for name, m in batchnorm_layers(model)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


def test_hooks_match_direct_per_class_moments() -> None:
    teacher = make_tiny_teacher(num_classes=4).double()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(7, 3, 12, 12, generator=g, dtype=torch.float64) for _ in range(3)]
    labels = [torch.randint(0, 3, (7,), generator=g) for _ in range(3)]  # class 3 never appears
    moments = ClassMoments(teacher.model, 4, torch.device("cpu"))
    with torch.no_grad():
        for x, y in zip(batches, labels, strict=True):
            with moments.observe(y):
                teacher.model(x)
    mean, var = moments.mean_var()

    all_x, all_y = torch.cat(batches), torch.cat(labels)
    direct = _bn_inputs(teacher.model, all_x)
    assert set(direct) == set(mean)
    for name, inp in direct.items():
        for c in range(3):
            sel = inp[all_y == c]
            torch.testing.assert_close(mean[name][c], sel.mean((0, 2, 3)), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(
                var[name][c], sel.var((0, 2, 3), unbiased=False), rtol=1e-9, atol=1e-12
            )
            assert moments.count[name][c] == sel.shape[0] * sel.shape[2] * sel.shape[3]
        # A class without data gets the neutral 0 / 1, and a zero count that says so.
        assert torch.all(mean[name][3] == 0)
        assert torch.all(var[name][3] == 1)
        assert moments.count[name][3] == 0
    assert moments.images.tolist() == [float((all_y == c).sum()) for c in range(4)]


def test_hooks_are_removed_and_leave_outputs_unchanged() -> None:
    teacher = make_tiny_teacher()
    x = torch.randn(4, 3, 8, 8)
    before = teacher.model(x)
    moments = ClassMoments(teacher.model, 3, torch.device("cpu"))
    with moments.observe(torch.tensor([0, 1, 2, 0])):
        during = teacher.model(x)
    teacher.model(x)  # outside the block: nothing is counted
    torch.testing.assert_close(before, during)
    assert moments.images.tolist() == [2.0, 1.0, 1.0]


def test_resnet18_has_the_reference_bn_channel_count() -> None:
    from torchvision.models import resnet18

    layers = batchnorm_layers(resnet18(num_classes=10))
    # method.md 1.1: 20 BN layers incl. downsample, 4,800 channels.
    assert len(layers) == 20
    assert sum(m.num_features for _, m in layers if isinstance(m, nn.BatchNorm2d)) == 4800


def test_model_without_batchnorm_is_rejected() -> None:
    with pytest.raises(ConfigError, match="Expected a teacher with BatchNorm layers"):
        batchnorm_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_labels_out_of_range_are_rejected() -> None:
    moments = ClassMoments(make_tiny_teacher().model, 3, torch.device("cpu"))
    with (
        pytest.raises(ConfigError, match=r"Expected labels in \[0, 3\)"),
        moments.observe(torch.tensor([0, 3])),
    ):
        pass


def _dataset(n: int = 24, size: int = 8, classes: int = 3) -> ImageDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % classes
    return ImageDataset(images, labels, tuple(str(i) for i in range(classes)))


def test_compute_save_load_round_trip(tmp_path: Path) -> None:
    teacher = make_tiny_teacher()
    stats = compute_class_stats(teacher, _dataset(), image_size=8, batch_size=5)
    assert stats.images_per_class.tolist() == [8, 8, 8]
    save_class_stats(stats, tmp_path / "bnstats.pt")
    loaded = load_class_stats(tmp_path)
    assert loaded.layers == stats.layers
    assert loaded.teacher == teacher.spec
    assert loaded.teacher_sha256 == teacher.sha256()
    for name in stats.layers:
        torch.testing.assert_close(loaded.mean[name], stats.mean[name].float())
        torch.testing.assert_close(loaded.var[name], stats.var[name].float())
        assert torch.equal(loaded.count[name], stats.count[name])
    loaded.check_teacher(teacher)
    other = make_tiny_teacher(seed=5)
    with pytest.raises(ArtifactError, match="Expected the teacher these statistics were computed with"):
        loaded.check_teacher(other)


def test_batch_size_does_not_change_the_statistics() -> None:
    teacher = make_tiny_teacher()
    a = compute_class_stats(teacher, _dataset(), image_size=8, batch_size=24)
    b = compute_class_stats(teacher, _dataset(), image_size=8, batch_size=5)
    for name in a.layers:
        torch.testing.assert_close(a.mean[name], b.mean[name], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.var[name], b.var[name], rtol=1e-10, atol=1e-12)


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="run `lpld squeeze`"):
        load_class_stats(tmp_path)
    torch.save({"format": "something-else"}, tmp_path / "bnstats.pt")
    with pytest.raises(ArtifactError, match="Expected an 'lpld-class-bn-stats' file"):
        load_class_stats(tmp_path)
    torch.save({"format": "lpld-class-bn-stats", "format_version": 99}, tmp_path / "bnstats.pt")
    with pytest.raises(ArtifactError, match="Got 99; upgrade lpld_pipeline"):
        load_class_stats(tmp_path)
