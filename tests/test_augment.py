"""Tests of lpldstore.augment: pure draws, kernel contracts, and bit-exact replay from stored arrays."""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from torchvision.transforms.v2 import functional as tvf

from lpldstore.augment import apply_params
from lpldstore.augment import kernels as ops
from lpldstore.augment import replay as augment_module
from lpldstore.augment.kernels import KERNELS
from lpldstore.errors import ConfigError, ValidationError
from lpldstore.format import augmentations as draws
from lpldstore.format.augmentations import KERNEL, REGISTRY, BatchGeometry
from lpldstore.format.params import (
    AugmentParams,
    augment_rng,
    check_kernel_name,
    draw_params,
    validate_params,
)
from lpldstore.format.records import RelabelConfig

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SMALL = settings(max_examples=40, deadline=None)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _relabel(**kw: Any) -> RelabelConfig:
    return RelabelConfig(**{"output_size": (24, 20), **kw})


def _images(n: int, hw: tuple[int, int] = (37, 45), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *hw, 3), dtype=torch.uint8, generator=gen)


def _store_round_trip(params: AugmentParams, slots: int) -> AugmentParams:
    """What the store does: pad every array to the batch's slots with its fill value, serialize, trim."""
    specs = {a.name: a for s in REGISTRY.values() for a in s.arrays}
    read: dict[str, npt.NDArray[Any]] = {}
    for name, arr in params.to_arrays().items():
        spec = specs[name]
        assert arr.dtype == np.dtype(spec.dtype)
        if spec.scope == "sample":
            padded = np.full((slots, *spec.trailing), spec.fill_value, dtype=spec.dtype)
            padded[: params.n] = arr
        else:
            padded = arr.copy()
        buf = io.BytesIO()
        np.save(buf, padded)
        buf.seek(0)
        loaded = np.load(buf)
        read[name] = loaded[: params.n] if spec.scope == "sample" else loaded
    return AugmentParams.from_arrays(read)


# --- determinism and streams --------------------------------------------------------------------


def test_draw_is_a_pure_function_of_seed_epoch_batch() -> None:
    relabel = _relabel(seed=7)
    a = draw_params(relabel, (37, 45), 16, 3, 5, extras=("cutout",))
    b = draw_params(relabel, (37, 45), 16, 3, 5, extras=("cutout",))
    assert a == b
    others = [
        draw_params(_relabel(seed=8), (37, 45), 16, 3, 5, extras=("cutout",)),
        draw_params(relabel, (37, 45), 16, 4, 5, extras=("cutout",)),
        draw_params(relabel, (37, 45), 16, 3, 6, extras=("cutout",)),
    ]
    for other in others:
        assert other != a
        assert not np.array_equal(other.crops, a.crops)
        assert not np.array_equal(other.mix_index, a.mix_index)
        assert not np.array_equal(other.extra["cutout_box"], a.extra["cutout_box"])


def test_no_global_rng_is_used_or_consumed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a = draw_params(_relabel(), (37, 45), 8, 0, 0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])  # type: ignore[index]
    torch.manual_seed(123)
    np.random.seed(123)
    assert draw_params(_relabel(), (37, 45), 8, 0, 0) == a


def test_streams_are_spawned_children_of_the_batch_seed_sequence() -> None:
    children = np.random.SeedSequence([5, 2, 9]).spawn(4)
    for stream, child in enumerate(children):
        expected = np.random.default_rng(child).random(8)
        assert np.array_equal(augment_rng(5, 2, 9, stream).random(8), expected)
    assert len({s.stream for s in REGISTRY.values()}) == len(REGISTRY)


def test_adding_or_changing_one_augmentation_leaves_the_others_draws_alone() -> None:
    base = draw_params(_relabel(), (37, 45), 32, 1, 2)
    with_cutout = draw_params(_relabel(), (37, 45), 32, 1, 2, extras=("cutout",))
    assert dataclasses.replace(with_cutout, extra={}) == base
    no_mix = draw_params(_relabel(mix="none"), (37, 45), 32, 1, 2)
    assert np.array_equal(no_mix.crops, base.crops)
    assert np.array_equal(no_mix.flips, base.flips)
    other_flip = draw_params(_relabel(flip_prob=0.3), (37, 45), 32, 1, 2)
    assert np.array_equal(other_flip.crops, base.crops)
    assert np.array_equal(other_flip.mix_index, base.mix_index)


@pytest.mark.parametrize(("kw", "message"), [({"seed": -1}, "seed"), ({"epoch": -1}, "epoch")])
def test_draw_rejects_negative_keys(kw: dict[str, int], message: str) -> None:
    args = {"seed": 0, "epoch": 0, "batch": 0, "stream": 0, **kw}
    with pytest.raises(ConfigError, match=f"Expected a non-negative integer {message}"):
        augment_rng(**args)


def test_draw_rejects_unknown_extras_and_huge_batches() -> None:
    with pytest.raises(ConfigError, match=r"optional augmentations among \['cutout'\]"):
        draw_params(_relabel(), (37, 45), 4, 0, 0, extras=("mixup",))
    with pytest.raises(ConfigError, match="mix_index is stored as int16"):
        draw_params(_relabel(), (37, 45), 40_000, 0, 0)


# --- crop boxes ---------------------------------------------------------------------------------


@SMALL
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    n=st.integers(0, 40),
    seed=st.integers(0, 2**32),
    scale=st.sampled_from([(0.08, 1.0), (0.5, 0.5), (0.9, 1.0), (0.01, 0.02)]),
    ratio=st.sampled_from([(3 / 4, 4 / 3), (1.0, 1.0), (0.1, 10.0), (3.0, 5.0)]),
)
def test_crop_boxes_inside_image_and_ranges(
    height: int,
    width: int,
    n: int,
    seed: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> None:
    boxes, fell_back = draws.crop_boxes(np.random.default_rng(seed), (height, width), n, scale, ratio)
    assert boxes.shape == (n, 4)
    top, left, h, w = boxes.T
    assert (top >= 0).all()
    assert (left >= 0).all()
    assert (h >= 1).all()
    assert (w >= 1).all()
    assert (top + h <= height).all()
    assert (left + w <= width).all()
    area = height * width
    for _, _, bh, bw in boxes[~fell_back].tolist():
        # round(sqrt(A r)) = w and round(sqrt(A / r)) = h for some A in the scale range and r in
        # the ratio range, so the products and quotients of w +- 1/2 and h +- 1/2 bracket them.
        assert (bw - 0.5) * (bh - 0.5) <= scale[1] * area * (1 + 1e-9)
        assert (bw + 0.5) * (bh + 0.5) >= scale[0] * area * (1 - 1e-9)
        assert (bw - 0.5) / (bh + 0.5) <= ratio[1] * (1 + 1e-9)
        assert (bw + 0.5) / max(bh - 0.5, 1e-9) >= ratio[0] * (1 - 1e-9)
    for t, lft, bh, bw in boxes[fell_back].tolist():
        assert (t, lft) == ((height - bh) // 2, (width - bw) // 2)


def test_crop_fallback_is_torchvisions_centre_crop() -> None:
    # A scale no box can reach forces the fallback; the ratio range then picks the shape.
    boxes, fell_back = draws.crop_boxes(np.random.default_rng(0), (100, 10), 3, (1.0, 1.0), (3 / 4, 4 / 3))
    assert fell_back.all()
    assert boxes.tolist() == [[43, 0, 13, 10]] * 3  # h = round(10 / (3/4)), centred


def test_crop_draw_covers_the_scale_range() -> None:
    boxes, fell_back = draws.crop_boxes(
        np.random.default_rng(0), (224, 224), 2000, (0.08, 1.0), (3 / 4, 4 / 3)
    )
    frac = boxes[:, 2] * boxes[:, 3] / 224**2
    assert fell_back.mean() < 0.1
    assert frac.min() < 0.1
    assert frac.max() > 0.9
    assert 0.45 < np.median(frac[~fell_back]) < 0.6


# --- flip and CutMix ----------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "expected"), [(0.0, 0.0), (1.0, 1.0), (0.5, 0.5)])
def test_flip_probability(p: float, expected: float) -> None:
    flips = draw_params(_relabel(flip_prob=p), (8, 8), 4000, 0, 0).flips
    assert abs(flips.mean() - expected) < 0.03


@SMALL
@given(
    out_h=st.integers(1, 300),
    out_w=st.integers(1, 300),
    n=st.integers(0, 64),
    seed=st.integers(0, 2**32),
    alpha=st.sampled_from([0.2, 1.0, 5.0]),
)
def test_cutmix_box_inside_output_and_index_a_permutation(
    out_h: int, out_w: int, n: int, seed: int, alpha: float
) -> None:
    relabel = _relabel(output_size=(out_h, out_w), seed=seed, mix_alpha=alpha)
    params = draw_params(relabel, (10, 10), n, 0, 0)
    assert sorted(params.mix_index.tolist()) == list(range(n))
    top, left, bottom, right = params.mix_box
    assert 0 <= top <= bottom <= out_h
    assert 0 <= left <= right <= out_w
    cut = math.sqrt(1 - params.mix_lam)
    assert bottom - top <= 2 * (int(out_h * cut) // 2)
    assert right - left <= 2 * (int(out_w * cut) // 2)
    assert 0.0 <= params.mix_lam <= 1.0
    assert float(np.float32(params.mix_lam)) == params.mix_lam
    validate_params(params, (10, 10), (out_h, out_w))


def test_cutmix_lambda_is_beta_distributed() -> None:
    lams = np.array([draw_params(_relabel(), (8, 8), 2, 0, b).mix_lam for b in range(400)])
    assert abs(lams.mean() - 0.5) < 0.05  # Beta(1, 1) = U(0, 1)
    assert abs(lams.var() - 1 / 12) < 0.02


def test_no_mix_is_the_identity() -> None:
    params = draw_params(_relabel(mix="none"), (37, 45), 6, 0, 0)
    assert params.mix_index.tolist() == list(range(6))
    assert (params.mix_lam, params.mix_box) == (1.0, (0, 0, 0, 0))
    x = torch.randn(6, 3, 24, 20)
    assert torch.equal(ops.cutmix_kernel(x, params.to_arrays(), _relabel()), x)


def test_cutmix_kernel_matches_the_sre2l_in_place_replay() -> None:
    params = draw_params(_relabel(seed=3), (37, 45), 8, 0, 1)
    x = torch.randn(8, 3, 24, 20)
    ref = x.clone()
    t, lft, b, r = params.mix_box
    index = torch.from_numpy(params.mix_index.copy())
    ref[:, :, t:b, lft:r] = ref[index, :, t:b, lft:r]
    assert (b - t) * (r - lft) > 0
    assert torch.equal(ops.cutmix_kernel(x, params.to_arrays(), _relabel()), ref)


# --- cutout -------------------------------------------------------------------------------------


def test_cutout_draw_follows_the_in21k_recipe() -> None:
    params = draw_params(_relabel(output_size=(31, 20)), (37, 45), 500, 0, 0, extras=("cutout",))
    box, fill = params.extra["cutout_box"], params.extra["cutout_fill"]
    assert box.dtype == np.int16
    assert fill.dtype == np.uint8
    assert (box[:, 2] == 16).all()
    assert (box[:, 3] == 10).all()
    assert box[:, 0].min() == 0
    assert box[:, 0].max() == 30
    assert box[:, 1].max() == 19
    assert fill.min() < 10
    assert fill.max() > 245


def test_cutout_kernel_equals_pil_rectangle() -> None:
    params = draw_params(_relabel(output_size=(17, 23)), (37, 45), 12, 0, 0, extras=("cutout",))
    x = torch.randint(0, 256, (12, 3, 17, 23), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = ops.cutout_kernel(x, params.to_arrays(), _relabel())
    for i in range(12):
        img = Image.fromarray(x[i].permute(1, 2, 0).numpy())
        cy, cx, ch, cw = params.extra["cutout_box"][i].tolist()
        y1, y2 = np.clip([cy - ch // 2, cy + ch // 2], 0, 17).tolist()
        x1, x2 = np.clip([cx - cw // 2, cx + cw // 2], 0, 23).tolist()
        ImageDraw.Draw(img).rectangle([x1, y1, x2, y2], fill=tuple(params.extra["cutout_fill"][i].tolist()))
        assert torch.equal(out[i], torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))


def test_cutout_gpu_path_equals_the_cpu_path() -> None:
    # The mask path that runs on a GPU, run on the CPU against the per-sample slices.
    params = draw_params(_relabel(output_size=(17, 23)), (37, 45), 40, 0, 3, extras=("cutout",))
    arrays = params.to_arrays()
    x = torch.randint(0, 256, (40, 3, 17, 23), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    expected = ops.cutout_kernel(x, arrays, _relabel())
    box = np.asarray(arrays["cutout_box"], dtype=np.int64)
    cy, cx, ch, cw = box.T
    bounds = np.stack(
        [
            np.clip(cy - ch // 2, 0, 17),
            np.minimum(np.clip(cy + ch // 2, 0, 17) + 1, 17),
            np.clip(cx - cw // 2, 0, 23),
            np.minimum(np.clip(cx + cw // 2, 0, 23) + 1, 23),
        ],
        axis=1,
    )
    fill = np.asarray(arrays["cutout_fill"])
    assert torch.equal(ops._cutout_masked(x, bounds, fill, inplace=False), expected)
    inplace = x.clone()
    assert ops._cutout_masked(inplace, bounds, fill, inplace=True) is inplace
    assert torch.equal(inplace, expected)


# --- kernel contracts (torchvision check_kernel) ------------------------------------------------


def _kernel_input(spec_name: str, n: int, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(n)
    if REGISTRY[spec_name].stage == "source":
        return _images(n).to(device)
    if REGISTRY[spec_name].stage == "uint8":
        return torch.randint(0, 256, (n, 3, 24, 20), dtype=torch.uint8, generator=gen).to(device)
    return torch.randn(n, 3, 24, 20, generator=gen).to(device)


def _check_kernel(spec_name: str, device: str) -> None:
    relabel = _relabel(seed=11)
    spec = REGISTRY[spec_name]
    arrays = draw_params(relabel, (37, 45), 6, 0, 0, extras=("cutout",)).to_arrays()
    x = _kernel_input(spec_name, 6, device)
    before, version = x.clone(), x._version
    out = KERNELS[spec_name](x, arrays, relabel)
    assert x._version == version, "kernel wrote into its input"
    assert torch.equal(x, before)
    assert out.dtype == x.dtype
    assert out.device == x.device
    assert out.shape == (6, 3, 24, 20)
    assert out.data_ptr() != x.data_ptr()
    if all(a.scope == "sample" for a in spec.arrays):
        for i in [0, 3, 5]:
            one = {a.name: arrays[a.name][i : i + 1] for a in spec.arrays}
            assert torch.equal(KERNELS[spec_name](x[i : i + 1], one, relabel), out[i : i + 1])
        empty = {a.name: arrays[a.name][:0] for a in spec.arrays}
        assert KERNELS[spec_name](x[:0], empty, relabel).shape == (0, 3, 24, 20)
    # inplace=True (apply_params on its own intermediates) gives the same values.
    mine = x.clone()
    assert torch.equal(KERNELS[spec_name](mine, arrays, relabel, inplace=True), out)


@pytest.mark.parametrize("spec_name", list(REGISTRY))
def test_kernel_contract_cpu(spec_name: str) -> None:
    _check_kernel(spec_name, "cpu")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("spec_name", list(REGISTRY))
def test_kernel_contract_cuda(spec_name: str) -> None:
    _check_kernel(spec_name, "cuda")


def test_crop_kernel_is_torchvision_resized_crop_on_uint8() -> None:
    relabel = _relabel(interpolation="bicubic")
    x = _images(4)
    params = draw_params(relabel, (37, 45), 4, 0, 0)
    out = ops.crop_kernel(x, params.to_arrays(), relabel)
    for i, (t, lft, h, w) in enumerate(params.crops.tolist()):
        ref = tvf.resized_crop(
            x[i].permute(2, 0, 1).contiguous(), t, lft, h, w, [24, 20], tvf.InterpolationMode.BICUBIC
        )
        assert torch.equal(out[i], ref)


def test_registry_is_read_only_and_specs_pickle() -> None:
    with pytest.raises(TypeError):
        REGISTRY["crop"] = REGISTRY["flip"]  # type: ignore[index]
    for spec in REGISTRY.values():
        again = pickle.loads(pickle.dumps(spec))
        # repr, not ==: mix_lam's NaN fill value is unequal to itself once copied.
        assert repr(again) == repr(spec)
        assert again.draw is spec.draw
        assert again.check is spec.check
    assert list(KERNELS) == sorted(KERNELS, key=list(REGISTRY).index), "one kernel per augmentation"
    assert set(KERNELS) == set(REGISTRY)
    names = [a.name for s in REGISTRY.values() for a in s.arrays]
    assert len(names) == len(set(names))
    assert list(REGISTRY) == ["crop", "cutout", "flip", "cutmix"]
    stages = [s.stage for s in REGISTRY.values()]
    assert stages == sorted(stages, key=["source", "uint8", "float"].index)


def test_params_pickle_equality_and_read_only() -> None:
    params = draw_params(_relabel(), (37, 45), 5, 0, 0, extras=("cutout",))
    again = pickle.loads(pickle.dumps(params))
    assert again == params
    assert again is not params
    assert not again.crops.flags.writeable
    assert not again.extra["cutout_box"].flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        params.crops[0, 0] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.mix_lam = 0.5  # type: ignore[misc]
    assert type(params).__hash__ is None


def test_params_do_not_alias_caller_arrays() -> None:
    crops = np.array([[0, 0, 2, 2]])
    params = AugmentParams(
        crops=crops, flips=np.array([False]), mix_index=np.array([0]), mix_lam=1.0, mix_box=(0, 0, 0, 0)
    )
    crops[0, 0] = 5
    assert params.crops[0, 0] == 0
    assert crops.flags.writeable


# --- validation ---------------------------------------------------------------------------------


def test_validation_errors() -> None:
    params = draw_params(_relabel(), (37, 45), 4, 0, 0)
    with pytest.raises(ValidationError, match=r"crop boxes .* inside the 20x20 source image"):
        validate_params(params, (20, 20), (24, 20))
    bad = dataclasses.replace(params, mix_index=np.array([0, 0, 1, 2]))
    with pytest.raises(ValidationError, match=r"permutation of range\(4\)"):
        validate_params(bad, (37, 45), (24, 20))
    with pytest.raises(ValidationError, match=r"mix_box.*inside the 24x20 output"):
        validate_params(dataclasses.replace(params, mix_box=(0, 0, 25, 5)), (37, 45), (24, 20))
    with pytest.raises(ValidationError, match="Expected extra arrays among"):
        dataclasses.replace(params, extra={"flip": np.zeros(4, bool)})
    with pytest.raises(ValidationError, match="Expected crops of shape"):
        dataclasses.replace(params, crops=np.zeros((4, 3), np.int32))
    with pytest.raises(ValidationError, match=r"'crop' values in \[-32768, 32767\]"):
        dataclasses.replace(params, crops=np.full((4, 4), 40_000)).to_arrays()
    with pytest.raises(ValidationError, match="Expected all of"):
        apply_params(
            _images(4),
            dataclasses.replace(params, extra={"cutout_fill": np.zeros((4, 3), np.uint8)}),
            _relabel(),
            MEAN,
            STD,
        )
    with pytest.raises(ValidationError, match=r"Expected images of shape \(4, H, W, 3\)"):
        apply_params(_images(3), params, _relabel(), MEAN, STD)
    with pytest.raises(ValidationError, match="Expected a uint8 tensor"):
        apply_params(_images(4).float(), params, _relabel(), MEAN, STD)


# --- the kernel recorded in the store -----------------------------------------------------------


def test_check_kernel_name() -> None:
    check_kernel_name(KERNEL, "bilinear")
    check_kernel_name(KERNEL, "bicubic", replay_interpolation="bicubic")
    with pytest.raises(ConfigError, match=r"Expected a store made with the crop kernel .* Got 'cv2.resize'"):
        check_kernel_name("cv2.resize", "bilinear")
    with pytest.raises(ConfigError, match="pass override_kernel=True"):
        check_kernel_name(KERNEL, "lanczos")
    with pytest.raises(ConfigError, match=r"stored interpolation 'bilinear'\. Got 'bicubic'"):
        check_kernel_name(KERNEL, "bilinear", replay_interpolation="bicubic")
    check_kernel_name("cv2.resize", "lanczos", replay_interpolation="bilinear", override=True)


def test_apply_refuses_a_foreign_kernel_unless_overridden() -> None:
    foreign = _relabel(kernel="PIL.Image.resize")
    params = draw_params(foreign, (37, 45), 3, 0, 0)
    with pytest.raises(ConfigError, match=r"Got 'PIL\.Image\.resize' instead"):
        apply_params(_images(3), params, foreign, MEAN, STD)
    out = apply_params(_images(3), params, foreign, MEAN, STD, override_kernel=True)
    assert torch.equal(out, apply_params(_images(3), params, _relabel(), MEAN, STD))


# --- relabel-time pixels == replayed pixels -----------------------------------------------------

RECIPES = [
    pytest.param({}, (), id="cutmix-bilinear"),
    pytest.param({"interpolation": "bicubic", "antialias": False}, (), id="cutmix-bicubic-noaa"),
    pytest.param({"interpolation": "nearest", "mix": "none"}, (), id="nomix-nearest"),
    pytest.param({"flip_prob": 0.0, "mix": "none"}, ("cutout",), id="in21k-cutout"),
]


def _relabel_then_replay(kw: dict[str, Any], extras: tuple[str, ...], device: str) -> None:
    relabel = _relabel(seed=2024, **kw)
    n, slots = 13, 16  # a short last batch: 3 padded slots in the store
    images = _images(n).to(device)
    for epoch, batch in [(0, 0), (3, 7)]:
        # Relabel time: draw, apply, (teacher sees these pixels), store the params.
        drawn = draw_params(relabel, (37, 45), n, epoch, batch, extras=extras)
        teacher_pixels = apply_params(images, drawn, relabel, MEAN, STD)
        # Training time: the loader reads the stored arrays back and replays them.
        stored = _store_round_trip(drawn, slots)
        assert stored == drawn
        replayed = apply_params(images.clone(), stored, relabel, MEAN, STD)
        assert teacher_pixels.dtype == torch.float32
        assert teacher_pixels.device == images.device
        assert teacher_pixels.shape == (n, 3, 24, 20)
        assert torch.equal(teacher_pixels, replayed)


@pytest.mark.parametrize(("kw", "extras"), RECIPES)
def test_relabel_pixels_equal_replayed_pixels_cpu(kw: dict[str, Any], extras: tuple[str, ...]) -> None:
    _relabel_then_replay(kw, extras, "cpu")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("kw", "extras"), RECIPES)
def test_relabel_pixels_equal_replayed_pixels_cuda(kw: dict[str, Any], extras: tuple[str, ...]) -> None:
    _relabel_then_replay(kw, extras, "cuda")


def test_replay_does_not_depend_on_the_callers_memory_layout() -> None:
    relabel = _relabel()
    big = _images(8, (37, 90))
    images = big[:, :, ::2]  # a strided view
    params = draw_params(relabel, (37, 45), 8, 0, 0)
    before = big.clone()
    out = apply_params(images, params, relabel, MEAN, STD)
    assert torch.equal(big, before)
    assert torch.equal(out, apply_params(images.contiguous(), params, relabel, MEAN, STD))


def test_apply_order_crop_flip_normalize_cutmix() -> None:
    relabel = _relabel(seed=5)
    images = _images(6)
    params = draw_params(relabel, (37, 45), 6, 0, 0, extras=("cutout",))
    arrays = params.to_arrays()
    x = ops.crop_kernel(images, arrays, relabel)
    x = ops.cutout_kernel(x, arrays, relabel)
    x = torch.where(torch.from_numpy(params.flips.copy()).view(-1, 1, 1, 1), x.flip(-1), x)
    x = (x.float() * (1 / 255) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    x = ops.cutmix_kernel(x, arrays, relabel)
    assert torch.equal(apply_params(images, params, relabel, MEAN, STD), x)


def test_normalization_matches_torchvision_for_every_uint8_value() -> None:
    x = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16)
    expected = tvf.normalize(tvf.to_dtype(x, torch.float32, scale=True), mean=list(MEAN), std=list(STD))
    assert torch.equal(ops.to_normalized_float(x, MEAN, STD), expected)
    assert torch.equal(x, torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(1, 3, 16, 16))
    with pytest.raises(ValidationError, match="Expected a uint8 batch before normalization"):
        ops.to_normalized_float(expected, MEAN, STD)


@pytest.mark.parametrize("extras", [(), ("cutout",)])
def test_apply_in_chunks_of_samples_equals_whole_batch(monkeypatch: pytest.MonkeyPatch, extras: Any) -> None:
    relabel = _relabel(seed=9)
    images = _images(11)
    params = draw_params(relabel, (37, 45), 11, 2, 5, extras=extras)
    per_sample = 3 * 24 * 20 * 4
    monkeypatch.setattr(augment_module, "_CHUNK_BYTES", 1 << 30)
    whole = apply_params(images, params, relabel, MEAN, STD)
    for rows in (1, 4, 11):
        monkeypatch.setattr(augment_module, "_CHUNK_BYTES", rows * per_sample)
        assert torch.equal(apply_params(images, params, relabel, MEAN, STD), whole)
    out = torch.empty(2, 3, 24, 20)
    ops.normalize_into(out, images[:2, :24, :20].permute(0, 3, 1, 2).contiguous(), MEAN, STD)
    assert torch.equal(out, ops.to_normalized_float(images[:2, :24, :20].permute(0, 3, 1, 2), MEAN, STD))
    with pytest.raises(ValidationError, match="a uint8 batch and a float32 output of its shape"):
        ops.normalize_into(out, images[:1, :24, :20].permute(0, 3, 1, 2), MEAN, STD)


def test_geometry_record() -> None:
    geom = BatchGeometry(n=2, image_hw=(3, 4), output_size=(5, 6))
    assert pickle.loads(pickle.dumps(geom)) == geom


# --- the fused core path (crop, flip, CutMix): the registry order's values, bit for bit -------------

FUSED = [
    pytest.param({}, id="bilinear-aa"),
    pytest.param({"antialias": False}, id="bilinear"),
    pytest.param({"interpolation": "bicubic"}, id="bicubic-aa"),
    pytest.param({"interpolation": "bicubic", "antialias": False}, id="bicubic"),
    pytest.param({"interpolation": "nearest"}, id="nearest"),
    pytest.param({"mix": "none", "flip_prob": 1.0}, id="nomix-allflip"),
    pytest.param({"output_size": (37, 45)}, id="same-size-as-source"),
]


def _reference(images: torch.Tensor, params: AugmentParams, relabel: RelabelConfig) -> torch.Tensor:
    """The replay order written out with torchvision per sample (replay.py's module docstring)."""
    interpolation = tvf.InterpolationMode(relabel.interpolation)
    samples = []
    for i, (t, left, h, w) in enumerate(params.crops.tolist()):
        x = tvf.resized_crop(
            images[i].permute(2, 0, 1),
            t,
            left,
            h,
            w,
            list(relabel.output_size),
            interpolation,
            antialias=relabel.antialias,
        )
        samples.append(tvf.horizontal_flip(x) if params.flips[i] else x)
    out_h, out_w = relabel.output_size
    x = torch.stack(samples) if samples else torch.empty((0, 3, out_h, out_w), dtype=torch.uint8)
    x = tvf.normalize(tvf.to_dtype(x, torch.float32, scale=True), mean=list(MEAN), std=list(STD))
    top, left, bottom, right = params.mix_box
    x[:, :, top:bottom, left:right] = x[torch.from_numpy(params.mix_index.copy()), :, top:bottom, left:right]
    return x


def _full_crop_params(relabel: RelabelConfig, n: int, seed: int) -> AugmentParams:
    """Drawn params with some crops exactly the output size (torchvision skips the resize there)."""
    drawn = draw_params(relabel, (37, 45), n, seed, 1)
    crops = drawn.crops.copy()
    out_h, out_w = relabel.output_size
    for i in range(0, n, 3):
        crops[i] = (0, 0, out_h, out_w)
    return dataclasses.replace(drawn, crops=crops)


@pytest.mark.parametrize("kw", FUSED)
def test_fused_replay_equals_the_replay_order_written_out(kw: dict[str, Any]) -> None:
    relabel = _relabel(seed=11, **kw)
    for n, seed in [(13, 0), (1, 1), (0, 2), (40, 3)]:
        images = _images(n, seed=seed)
        params = _full_crop_params(relabel, n, seed) if n else draw_params(relabel, (37, 45), 0, 0, 0)
        fused = apply_params(images, params, relabel, MEAN, STD)
        assert fused.is_contiguous()
        assert fused.shape == (n, 3, *relabel.output_size)
        assert torch.equal(fused, _reference(images, params, relabel))


@pytest.mark.parametrize("kw", FUSED[:5])
def test_fused_replay_equals_the_kernels_one_by_one(
    monkeypatch: pytest.MonkeyPatch, kw: dict[str, Any]
) -> None:
    relabel = _relabel(seed=3, **kw)
    images = _images(17, seed=4)
    params = _full_crop_params(relabel, 17, 5)
    fused = apply_params(images, params, relabel, MEAN, STD)
    monkeypatch.setattr(augment_module, "_CORE", ["no such augmentation"])
    assert torch.equal(apply_params(images, params, relabel, MEAN, STD), fused)


@pytest.mark.parametrize("kw", FUSED[:5])
def test_the_device_branch_rounds_batch_wise_as_torchvision_rounds_each_sample(
    monkeypatch: pytest.MonkeyPatch, kw: dict[str, Any]
) -> None:
    """The GPU branch, run on CPU with torchvision's float path (what it does on a GPU)."""
    from torchvision.transforms.v2.functional import _geometry

    monkeypatch.setattr(_geometry, "_do_native_uint8_resize_on_cpu", lambda interpolation: False)
    monkeypatch.setattr(ops, "_tv_native_uint8_on_cpu", lambda interpolation: False)
    monkeypatch.setattr(augment_module, "_resize_natively", lambda device: False)
    relabel = _relabel(seed=8, **kw)
    images = _images(15, seed=6)
    params = _full_crop_params(relabel, 15, 7)
    assert torch.equal(apply_params(images, params, relabel, MEAN, STD), _reference(images, params, relabel))


@pytest.mark.parametrize("extras", [(), ("cutout",)])
def test_indices_replay_the_gathered_images(extras: tuple[str, ...]) -> None:
    relabel = _relabel(seed=2)
    pool = _images(9, seed=1)
    index = np.array([3, 3, 0, 8, 5, 1, 7])
    params = draw_params(relabel, (37, 45), 7, 0, 4, extras=extras)
    gathered = apply_params(pool[torch.from_numpy(index)], params, relabel, MEAN, STD)
    assert torch.equal(apply_params(pool, params, relabel, MEAN, STD, indices=index), gathered)
    with pytest.raises(ValidationError, match=r"Expected indices in \[0, 9\)"):
        apply_params(pool, params, relabel, MEAN, STD, indices=index + 2)
    with pytest.raises(ValidationError, match="Expected indices of 7 integers"):
        apply_params(pool, params, relabel, MEAN, STD, indices=index[:3])
    with pytest.raises(ValidationError, match="Expected indices of 7 integers"):
        apply_params(pool, params, relabel, MEAN, STD, indices=index.astype(float))


@pytest.mark.parametrize("kw", FUSED)
def test_resize_crop_is_torchvisions_resized_crop(kw: dict[str, Any]) -> None:
    relabel = _relabel(**kw)
    images = _images(8, seed=3)
    params = _full_crop_params(relabel, 8, 2)
    src = images.permute(0, 3, 1, 2)
    for i, (t, left, h, w) in enumerate(params.crops.tolist()):
        ref = tvf.resized_crop(
            src[i],
            t,
            left,
            h,
            w,
            list(relabel.output_size),
            tvf.InterpolationMode(relabel.interpolation),
            antialias=relabel.antialias,
        )
        got = ops.resize_crop(src, i, (t, left, h, w), relabel)
        assert got.shape == (1, *ref.shape)
        assert torch.equal(got[0], ref)
