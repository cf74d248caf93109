"""The paper's switches: each one changes what it should, and a case here fails if it were ignored."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lpldstore
from lpld_pipeline import (
    ClassMoments,
    ConfigError,
    DataConfig,
    DataError,
    SqueezeConfig,
    SynthesisConfig,
    TeacherConfig,
    TrainConfig,
    build_dataset,
    compute_class_stats,
    load_synthesized,
    make_teacher,
    relabel,
    synthesize,
    synthesize_images,
)
from lpld_pipeline._augment import draw_params
from lpld_pipeline.artifacts import write_record
from lpld_pipeline.bnstats import save_class_stats
from lpld_pipeline.synthesize import jpeg_roundtrip
from lpld_pipeline.train import _optimizer, build_student
from lpld_pipeline.views import Views, training_views

from ._stores import (
    one_thread,  # noqa: F401  (autouse fixture)
    relabel_config,
    stage_dirs,
    tiny_images,
    tiny_teacher,
)
from .conftest import make_tiny_teacher, random_class_stats

# -- class statistics: exact moments or the reference's running average -------------------------------


def test_ema_class_statistics_follow_the_reference_update() -> None:
    teacher = make_tiny_teacher(num_classes=3).double()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    labels = [torch.tensor([0, 0, 1, 1, 1, 0]), torch.tensor([1, 0, 0, 0, 1, 1])]
    ema = ClassMoments(teacher.model, 3, torch.device("cpu"), estimator="ema", momentum=0.1)
    exact = ClassMoments(teacher.model, 3, torch.device("cpu"))
    seen: list[torch.Tensor] = []
    first = dict(teacher.model.named_modules())["bn1"]
    handle = first.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach()))
    with torch.no_grad():
        for x, y in zip(batches, labels, strict=True):
            with ema.observe(y), exact.observe(y):
                teacher.model(x)
    handle.remove()
    mean, var = ema.mean_var()
    # By hand: ClassAwareBatchNorm2d's update, from mean 0 / variance 1, per batch and present class.
    m_ref, v_ref = torch.zeros(3, 4, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64)
    for inp, y in zip(seen, labels, strict=True):
        for c in (0, 1):
            sel = inp[y == c]
            m_ref[c] = 0.9 * m_ref[c] + 0.1 * sel.mean((0, 2, 3))
            v_ref[c] = 0.9 * v_ref[c] + 0.1 * sel.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean["bn1"], m_ref)
    torch.testing.assert_close(var["bn1"], v_ref)
    assert mean["bn1"][2].eq(0).all()  # never seen: the initial values
    exact_mean, _ = exact.mean_var()
    assert not torch.allclose(exact_mean["bn1"][:2], mean["bn1"][:2])  # the estimator was not ignored
    with pytest.raises(ConfigError, match="class_stats 'exact' or 'ema'"):
        SqueezeConfig(class_stats="median")  # type: ignore[arg-type]


def test_squeeze_records_the_estimator_and_uses_the_views_on_digits() -> None:
    data = DataConfig(name="digits", image_size=12, augment=True, batch_size=512)
    train = build_dataset(data, "train")
    teacher = make_tiny_teacher(num_classes=10, width=4)

    def stats(**kw: object) -> object:
        return compute_class_stats(teacher, train, image_size=12, batch_size=512, **kw)  # type: ignore[arg-type]

    plain, ema = stats(), stats(estimator="ema")
    views = training_views(data, seed=0)
    viewed, again = stats(views=views), stats(views=views)
    assert ema.estimator == "ema"  # type: ignore[attr-defined]
    first = plain.layers[0]  # type: ignore[attr-defined]
    assert not torch.allclose(plain.mean[first], ema.mean[first])  # type: ignore[attr-defined]
    assert not torch.allclose(plain.mean[first], viewed.mean[first])  # type: ignore[attr-defined]
    torch.testing.assert_close(viewed.mean[first], again.mean[first])  # type: ignore[attr-defined]


# -- training views: the teacher learns relabel's inputs, flips only where labels survive them -------


def test_flip_is_a_dataset_property() -> None:
    assert not DataConfig(name="digits").flip_preserves_labels
    assert DataConfig(name="imagefolder").flip_preserves_labels
    assert DataConfig(name="digits", hflip=True).flip_preserves_labels
    assert not training_views(DataConfig(name="digits"), 0).flip
    x = build_dataset(DataConfig(name="digits", image_size=16), "val")[0][0][None].repeat(64, 1, 1, 1)
    no_flip = Views(size=16, crop_scale=(1.0, 1.0), flip=False, seed=0)
    flip = dataclasses.replace(no_flip, flip=True)
    torch.testing.assert_close(no_flip(x, 0, 0), x)  # full-image crop, no flip: the image itself
    flipped = flip(x, 0, 0)
    mirrored = ((flipped - x.flip(3)).abs() < 1e-5).flatten(1).all(1)
    assert 0 < int(mirrored.sum()) < 64  # about half flipped: the flip switch is live


def test_views_refuse_values_that_are_not_8_bit_pixels() -> None:
    with pytest.raises(DataError, match="8-bit pixels / 255"):
        Views(size=8, crop_scale=(0.5, 1.0), flip=False, seed=0)(torch.rand(2, 3, 8, 8), 0, 0)


def test_teacher_trained_on_views_differs_from_one_trained_on_plain_images() -> None:
    data = DataConfig(name="digits", image_size=12)
    train = torch.utils.data.Subset(build_dataset(data, "train"), range(128))
    train.classes = list(range(10))  # type: ignore[attr-defined]
    base = TeacherConfig(arch="tiny_resnet", width=4, train_epochs=1, normalization="none")
    plain = make_teacher(base, num_classes=10, train_data=train)
    views = training_views(data, seed=0)
    viewed = make_teacher(
        dataclasses.replace(base, train_augment=True), num_classes=10, train_data=train, views=views
    )
    assert plain.sha256() != viewed.sha256()
    with pytest.raises(ConfigError, match=r"training views for teacher\.train_augment"):
        make_teacher(dataclasses.replace(base, train_augment=True), num_classes=10, train_data=train)


# -- synthesis: flip from the data, jitter range, JPEG, bf16 on the CPU ------------------------------


def _synth(config: SynthesisConfig, stats_flip: bool = True) -> np.ndarray:
    teacher = make_tiny_teacher(num_classes=3)
    stats = dataclasses.replace(random_class_stats(teacher, 12), flip_preserves_labels=stats_flip)
    return synthesize_images(teacher, stats, config, image_size=12, class_names=("a", "b", "c")).images


def test_synthesis_flip_follows_the_statistics_data_when_unset() -> None:
    base = SynthesisConfig(ipc=2, iterations=4, lr=0.1, jitter=2, progress=False)
    unset_no = _synth(base, stats_flip=False)
    np.testing.assert_array_equal(unset_no, _synth(dataclasses.replace(base, flip=False)))
    assert not np.array_equal(unset_no, _synth(dataclasses.replace(base, flip=True)))


def test_symmetric_jitter_shifts_both_ways() -> None:
    keys = np.stack([np.arange(400), np.zeros(400, int)], 1)
    kw = {"size": (16, 16), "scale": (0.5, 1.0), "ratio": (0.75, 4 / 3), "flip": False, "jitter": 3}
    positive = draw_params(0, keys, 0, **kw).shifts  # type: ignore[arg-type]
    symmetric = draw_params(0, keys, 0, symmetric_jitter=True, **kw).shifts  # type: ignore[arg-type]
    assert (positive.min(), positive.max()) == (0, 3)
    assert (symmetric.min(), symmetric.max()) == (-3, 3)
    base = SynthesisConfig(ipc=2, iterations=3, lr=0.1, jitter=3, flip=False, progress=False)
    assert not np.array_equal(_synth(base), _synth(dataclasses.replace(base, jitter_range="symmetric")))


def test_bf16_synthesis_on_the_cpu_is_bf16() -> None:
    base = SynthesisConfig(ipc=2, iterations=3, lr=0.1, jitter=0, flip=False, progress=False)
    fp32, bf16 = _synth(base), _synth(dataclasses.replace(base, amp="bf16"))
    assert not np.array_equal(fp32, bf16)
    assert np.abs(fp32.astype(int) - bf16.astype(int)).mean() < 8  # the same images, rounded differently


def test_jpeg_output_is_what_relabel_gets_and_what_the_files_hold(tmp_path: Path) -> None:
    teacher = make_tiny_teacher(num_classes=3)
    squeeze_dir = tmp_path / "squeeze"
    squeeze_dir.mkdir()
    from lpld_pipeline import save_teacher_checkpoint

    save_teacher_checkpoint(teacher, squeeze_dir / "teacher.pt")
    save_class_stats(random_class_stats(teacher, 16), squeeze_dir / "bnstats.pt")
    base = SynthesisConfig(squeeze_dir=str(squeeze_dir), ipc=2, iterations=3, lr=0.1, progress=False)
    png = synthesize(dataclasses.replace(base, out=str(tmp_path / "png")))
    synthesize(dataclasses.replace(base, out=str(tmp_path / "jpg"), image_format="jpeg", jpeg_quality=75))
    stored = load_synthesized(tmp_path / "jpg").images
    np.testing.assert_array_equal(stored, jpeg_roundtrip(png.images, 75))
    assert not np.array_equal(stored, png.images)
    files = sorted((tmp_path / "jpg" / "imagefolder").rglob("*.jpg"))
    assert len(files) == 6
    np.testing.assert_array_equal(np.asarray(Image.open(files[0]).convert("RGB")), stored[0])
    assert not list((tmp_path / "jpg" / "imagefolder").rglob("*.png"))


# -- relabel: flips from the squeeze data, bf16 on the CPU -------------------------------------------


def _relabel_store(tmp_path: Path, data: dict[str, object] | None, **kw: object) -> lpldstore.LabelStore:
    teacher, synth = tiny_teacher(), tiny_images()
    squeeze_dir, synth_dir = stage_dirs(tmp_path, teacher, synth)
    if data is not None:
        write_record(squeeze_dir, "squeeze", {"config": {"data": data}})
    out = tmp_path / "s.zarr"
    relabel(
        relabel_config(
            squeeze_dir=str(squeeze_dir), synth_dir=str(synth_dir), out=str(out), device="cpu", **kw
        )
    )
    return lpldstore.open_store(out)


def test_relabel_flips_only_where_the_squeeze_data_allows(tmp_path: Path) -> None:
    with _relabel_store(tmp_path / "digits", {"name": "digits"}) as store:
        assert store.relabel.flip_prob == 0.0
        assert not store.metadata().flips.any()
    with _relabel_store(tmp_path / "photos", {"name": "imagefolder", "root": "/x"}) as store:
        assert store.relabel.flip_prob == 0.5
        assert store.metadata().flips.any()
    with _relabel_store(tmp_path / "forced", {"name": "digits"}, flip_prob=0.5) as store:
        assert store.relabel.flip_prob == 0.5


def test_relabel_in_bf16_on_the_cpu(tmp_path: Path) -> None:
    with (
        _relabel_store(tmp_path / "fp32", None, amp="none") as a,
        _relabel_store(tmp_path / "bf16", None, amp="bf16") as b,
    ):
        la, lb = a.entry_at(0).logits.astype(np.float32), b.entry_at(0).logits.astype(np.float32)
    assert not np.array_equal(la, lb)
    np.testing.assert_allclose(la, lb, atol=0.1 * np.abs(la).max())


# -- training: no weight decay on BN and biases (the reference's get_parameters) ----------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_weight_decay_skips_norm_and_bias_unless_asked(optimizer: str) -> None:
    config = TrainConfig(model="tiny_resnet", width=4, optimizer=optimizer, weight_decay=0.1)  # type: ignore[arg-type]
    model = build_student(config, 10)
    names = {id(p): n for n, p in model.named_parameters()}

    def decayed(cfg: TrainConfig) -> set[str]:
        groups = _optimizer(model, cfg).param_groups
        return {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}

    official = decayed(config)
    assert official == {n for n, p in model.named_parameters() if "weight" in n and p.ndim > 1}
    assert "bn1.weight" not in official
    assert "fc.bias" not in official
    everything = decayed(dataclasses.replace(config, decay_norm_and_bias=True))
    assert everything == set(names.values())


# -- evaluation transforms: ImageNet-1K centre crop, 21K resize, Tiny as is ---------------------------


def test_eval_transforms(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(
            tmp_path / "val" / cls / "0.png"
        )
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            tmp_path / "val" / cls / "1.png"
        )
    data = DataConfig(name="imagefolder", root=str(tmp_path), image_size=16)
    crop = build_dataset(data, "val")[0][0]
    resize = build_dataset(dataclasses.replace(data, eval_transform="resize"), "val")[0][0]
    assert crop.shape == resize.shape == (3, 16, 16)
    assert not torch.equal(crop, resize)  # a centre crop keeps less of the width than a squash
    native = build_dataset(dataclasses.replace(data, eval_transform="none"), "val")
    original = torch.from_numpy(np.array(Image.open(tmp_path / "val" / "a" / "1.png"))).permute(2, 0, 1)
    torch.testing.assert_close(native[1][0], original.float() / 255)
    with pytest.raises(DataError, match="Expected 16x16 images with eval_transform='none'"):
        native[0]


def test_presets_state_the_switches() -> None:
    from lpld_pipeline import RUN_PRESETS

    demo, tiny, in1k, in21k = (RUN_PRESETS[k] for k in ("demo", "tiny", "imagenet1k", "imagenet21k"))
    assert demo.squeeze.data.augment
    assert demo.squeeze.teacher.train_augment
    assert demo.train.temperature == 20.0
    assert tiny.synthesize.jitter_range == "symmetric"
    assert in1k.synthesize.jitter_range == "positive"
    assert {p.synthesize.image_format for p in (tiny, in1k, in21k)} == {"jpeg"}
    assert (tiny.train.val.eval_transform, in1k.train.val.eval_transform, in21k.train.val.eval_transform) == (
        "none",
        "resize_center_crop",
        "resize",
    )
    assert json.dumps(dataclasses.asdict(demo))  # records stay JSON


# -- pool policies reach the loader: order cycles, stored refuses, ilp draws -------------------------


def test_train_passes_the_pool_policy_through(tmp_path: Path) -> None:
    from lpld_pipeline import load_student_checkpoint, relabel_entries, train

    from ._stores import create_store

    teacher, synth = tiny_teacher(), tiny_images()
    with create_store(tmp_path / "s.zarr", teacher, synth) as writer:  # 8 entries: epochs 0-1 of 4 batches
        relabel_entries(writer, teacher, torch.from_numpy(synth.images))

    def weights(policy: str, epochs: int) -> dict[str, torch.Tensor]:
        out = tmp_path / f"{policy}-{epochs}"
        config = TrainConfig(
            store=str(tmp_path / "s.zarr"), out=str(out), model="tiny_resnet", width=4, epochs=epochs,
            lr=0.01, policy=policy, val=DataConfig(name="digits"), val_interval=100, progress=False,  # type: ignore[arg-type]
            device="cpu",
        )  # fmt: skip
        train(config)
        return dict(load_student_checkpoint(out)["model"])

    order, stored, ilp = weights("order", 2), weights("stored", 2), weights("ilp", 2)
    assert all(torch.equal(order[k], stored[k]) for k in order)  # both replay stored epochs 0 and 1
    assert not all(torch.equal(order[k], ilp[k]) for k in order)
    weights("order", 3)  # epoch 2 replays stored epoch 0 again
    with pytest.raises(ConfigError, match="policy 'stored'"):
        weights("stored", 3)
