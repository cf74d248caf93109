from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import lpldstore
from lpld_pipeline import ArtifactError, ConfigError, SynthesisConfig, plan_groups, synthesize_images
from lpld_pipeline._augment import AugParams, apply_params, draw_params, uniforms

from .conftest import make_tiny_teacher, random_class_stats

SIZE = 16
BASE = SynthesisConfig(
    ipc=2,
    iterations=4,
    lr=0.1,
    r_bn=0.05,
    jitter=3,
    crop_scale=(0.3, 1.0),
    groups_per_batch=1,
    progress=False,
)


def _run(config: SynthesisConfig, dtype: torch.dtype = torch.float64) -> np.ndarray:
    teacher = make_tiny_teacher(num_classes=3).to(dtype)
    stats = random_class_stats(teacher, SIZE)
    result = synthesize_images(
        teacher, stats, config, image_size=SIZE, class_names=stats.class_names, dtype=dtype
    )
    assert result.images.shape == (3 * config.ipc, SIZE, SIZE, 3)
    assert result.images.dtype == np.uint8
    assert result.labels.tolist() == sorted(result.labels.tolist())
    return result.images


@pytest.mark.parametrize("mode", ["class", "class_global"])
def test_packed_classes_equal_one_class_at_a_time(mode: str) -> None:
    one = _run(dataclasses.replace(BASE, mode=mode, groups_per_batch=1))  # type: ignore[arg-type]
    packed = _run(dataclasses.replace(BASE, mode=mode, groups_per_batch=3))  # type: ignore[arg-type]
    np.testing.assert_array_equal(one, packed)


def test_packing_equivalence_in_float32_within_tolerance() -> None:
    one = _run(dataclasses.replace(BASE, groups_per_batch=1), torch.float32)
    packed = _run(dataclasses.replace(BASE, groups_per_batch=3), torch.float32)
    assert np.abs(one.astype(int) - packed.astype(int)).max() <= 1


def test_packed_mixed_batches_equal_one_batch_at_a_time() -> None:
    cfg = dataclasses.replace(BASE, mode="mixed", ipc=2, group_size=2)
    np.testing.assert_array_equal(_run(cfg), _run(dataclasses.replace(cfg, groups_per_batch=3)))


def test_class_statistics_change_the_images() -> None:
    # Sanity of the equivalence tests: the modes really differ, so equality above is not vacuous.
    assert not np.array_equal(_run(BASE), _run(dataclasses.replace(BASE, mode="class_global")))


def test_seed_changes_images_and_rerun_repeats_them() -> None:
    a = _run(BASE)
    np.testing.assert_array_equal(a, _run(BASE))
    assert not np.array_equal(a, _run(dataclasses.replace(BASE, seed=1)))


def test_plan_groups_splits_large_classes_and_mixes_classes() -> None:
    groups = plan_groups(dataclasses.replace(BASE, ipc=5, group_size=2), [0, 2])
    assert [g.key for g in groups] == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]
    assert [len(g.labels) for g in groups] == [2, 2, 1, 2, 2, 1]
    assert groups[2].indices.tolist() == [4]
    mixed = plan_groups(dataclasses.replace(BASE, mode="mixed", ipc=2, group_size=3), [0, 1])
    assert [g.labels.tolist() for g in mixed] == [[0, 1, 0], [1]]
    assert all(g.target == -1 for g in mixed)


def test_draws_are_pure_functions_of_seed_key_and_iteration() -> None:
    keys = np.array([[0, 0], [5, 1], [7, 0]])
    kwargs = {"size": (32, 32), "scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3), "flip": True, "jitter": 4}
    together = draw_params(3, keys, 11, **kwargs)  # type: ignore[arg-type]
    alone = draw_params(3, keys[1:2], 11, **kwargs)  # type: ignore[arg-type]
    np.testing.assert_array_equal(together.boxes[1:2], alone.boxes)
    np.testing.assert_array_equal(together.shifts[1:2], alone.shifts)
    assert not np.array_equal(uniforms(3, keys, 11, 4), uniforms(3, keys, 12, 4))
    many = draw_params(0, np.stack([np.arange(500), np.zeros(500, int)], 1), 0, **kwargs)  # type: ignore[arg-type]
    top, left, h, w = many.boxes.T
    assert (top >= 0).all()
    assert (left >= 0).all()
    assert (top + h <= 32).all()
    assert (left + w <= 32).all()
    assert ((h * w) >= 0.08 * 32 * 32 * 0.8).all()
    assert 0.3 < many.flips.mean() < 0.7
    assert many.shifts.min() >= 0
    assert many.shifts.max() == 4


def test_synthesis_crop_sizes_are_lpldstores_rule_with_its_centred_fallback() -> None:
    keys = np.stack([np.arange(200), np.zeros(200, int)], 1)
    kwargs = {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3), "flip": False, "jitter": 0}
    drawn = draw_params(5, keys, 3, size=(24, 40), **kwargs)  # type: ignore[arg-type]
    u = uniforms(5, keys, 3, 25)
    h, w, found = lpldstore.crop_box_sizes(u[:, 0:20:2], u[:, 1:20:2], (24, 40), (0.08, 1.0), (3 / 4, 4 / 3))
    np.testing.assert_array_equal(drawn.boxes[:, 2], h)
    np.testing.assert_array_equal(drawn.boxes[:, 3], w)
    np.testing.assert_array_equal(drawn.boxes[found, 0], np.floor(u[found, 20] * (24 - h[found] + 1)))
    # No attempt fits a 8x32 image at 90-100 % of its area with ratios in [1/2, 1]: torchvision's
    # fallback is the ratio-clamped box (8x8), centred; the old rule took the whole image.
    wide = draw_params(0, keys[:5], 0, size=(8, 32), scale=(0.9, 1.0), ratio=(0.5, 1.0), flip=False, jitter=0)
    assert wide.boxes.tolist() == [[0, 12, 8, 8]] * 5


def test_apply_params_identity_flip_and_roll() -> None:
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    group_of = torch.tensor([0, 1])
    boxes = np.array([[0, 0, 8, 8], [0, 0, 8, 8]])
    ident = apply_params(x, _params(boxes, [False, True], [[0, 0], [0, 0]]), group_of)
    torch.testing.assert_close(ident[0], x[0])
    torch.testing.assert_close(ident[1], x[1].flip(-1))
    rolled = apply_params(x, _params(boxes, [False, False], [[2, 3], [0, 1]]), group_of)
    torch.testing.assert_close(rolled[0], torch.roll(x[0], (2, 3), (1, 2)))
    torch.testing.assert_close(rolled[1], torch.roll(x[1], (0, 1), (1, 2)))
    # A crop of the top-left quadrant is that quadrant upsampled, as F.interpolate does it.
    quarter = apply_params(x, _params(np.array([[0, 0, 4, 4]] * 2), [False, False], [[0, 0]] * 2), group_of)
    expected = torch.nn.functional.interpolate(
        x[..., :4, :4], size=(8, 8), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(quarter, expected)


def _params(boxes: np.ndarray, flips: list[bool], shifts: list[list[int]]) -> AugParams:
    return AugParams(boxes=np.asarray(boxes), flips=np.asarray(flips), shifts=np.asarray(shifts))


def test_bad_classes_and_missing_statistics_are_rejected() -> None:
    teacher = make_tiny_teacher()
    stats = random_class_stats(teacher, SIZE)
    with pytest.raises(ConfigError, match=r"Expected classes in \[0, 3\). Got \[5\]"):
        synthesize_images(
            teacher,
            stats,
            dataclasses.replace(BASE, classes=(0, 5)),
            image_size=SIZE,
            class_names=stats.class_names,
        )
    with pytest.raises(ConfigError, match="Expected class statistics for mode='class'"):
        synthesize_images(teacher, None, BASE, image_size=SIZE, class_names=stats.class_names)
    empty = dataclasses.replace(stats, images_per_class=torch.tensor([10, 0, 10]))
    with pytest.raises(ArtifactError, match=r"Classes \[1\] had none"):
        synthesize_images(teacher, empty, BASE, image_size=SIZE, class_names=stats.class_names)


def test_synthesis_lowers_the_cross_entropy_to_the_class() -> None:
    teacher = make_tiny_teacher()
    stats = random_class_stats(teacher, SIZE)
    cfg = dataclasses.replace(BASE, iterations=30, groups_per_batch=3, ipc=4, lr=0.2, r_bn=0.0)
    result = synthesize_images(teacher, stats, cfg, image_size=SIZE, class_names=stats.class_names)
    x = torch.from_numpy(result.images).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(result.labels)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        synthesized = torch.nn.functional.cross_entropy(teacher(x), labels)
        baseline = torch.nn.functional.cross_entropy(teacher(noise), labels)
    assert synthesized < baseline


def test_channels_last_gives_the_same_images() -> None:
    plain = _run(BASE, torch.float32)
    channels_last = _run(dataclasses.replace(BASE, channels_last=True), torch.float32)
    assert np.abs(plain.astype(int) - channels_last.astype(int)).max() <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_packing_on_gpu_with_bf16_and_channels_last() -> None:
    teacher = make_tiny_teacher(num_classes=3)
    stats = random_class_stats(teacher, SIZE)
    cfg = dataclasses.replace(BASE, amp="bf16", channels_last=True, iterations=20)
    device = torch.device("cuda")
    one = synthesize_images(
        teacher, stats, cfg, image_size=SIZE, class_names=stats.class_names, device=device
    )
    packed = synthesize_images(
        teacher,
        stats,
        dataclasses.replace(cfg, groups_per_batch=3),
        image_size=SIZE,
        class_names=stats.class_names,
        device=device,
    )
    # bf16 kernels may differ with batch size; the optimization is the same up to rounding.
    assert np.abs(one.images.astype(int) - packed.images.astype(int)).mean() < 2.0
