from __future__ import annotations

import json
from pathlib import Path

import pytest

from lpld_pipeline import (
    SQUEEZE_PRESETS,
    SYNTHESIS_PRESETS,
    ConfigError,
    SqueezeConfig,
    SynthesisConfig,
    config_from_dict,
    config_to_dict,
    resolve_config,
)


def test_layers_apply_in_order_preset_file_overrides(tmp_path: Path) -> None:
    file = tmp_path / "cfg.json"
    file.write_text(json.dumps({"ipc": 50, "lr": 0.5, "crop_scale": [0.2, 1.0]}))
    cfg = resolve_config(
        SynthesisConfig, SYNTHESIS_PRESETS, preset="imagenet1k", file=file, overrides=["lr=0.3", "mode=mixed"]
    )
    assert cfg.iterations == 4000  # preset
    assert cfg.ipc == 50  # file
    assert cfg.crop_scale == (0.2, 1.0)
    assert cfg.lr == 0.3  # override beats file
    assert cfg.mode == "mixed"


def test_nested_overrides_and_plain_strings() -> None:
    cfg = resolve_config(
        SqueezeConfig,
        SQUEEZE_PRESETS,
        preset="tiny",
        overrides=["teacher.weights=/ckpt/rn18.pth", "data.root=/data/tiny", "data.batch_size=64"],
    )
    assert cfg.teacher.weights == "/ckpt/rn18.pth"
    assert cfg.teacher.small_stem
    assert cfg.data.root == "/data/tiny"
    assert cfg.data.batch_size == 64


@pytest.mark.parametrize("preset", sorted(SYNTHESIS_PRESETS))
def test_synthesis_presets_round_trip_through_json(preset: str) -> None:
    cfg = SYNTHESIS_PRESETS[preset]
    assert config_from_dict(SynthesisConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg


@pytest.mark.parametrize("preset", sorted(SQUEEZE_PRESETS))
def test_squeeze_presets_round_trip_through_json(preset: str) -> None:
    cfg = SQUEEZE_PRESETS[preset]
    assert config_from_dict(SqueezeConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg


def test_reference_hyperparameters() -> None:
    # method.md 1.2: (iterations, lr, r_bn, jitter) per dataset.
    got = {k: (c.iterations, c.lr, c.r_bn, c.jitter) for k, c in SYNTHESIS_PRESETS.items() if k != "demo"}
    assert got == {
        "imagenet1k": (4000, 0.25, 0.01, 32),
        "tiny": (4000, 0.1, 0.05, 4),
        "imagenet21k": (2000, 0.05, 0.25, 32),
    }
    assert all(c.first_bn_multiplier == 10 and c.betas == (0.5, 0.9) for c in SYNTHESIS_PRESETS.values())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["ipcc=5"], r"Unknown key\(s\) \['ipcc'\] for SynthesisConfig"),
        (["ipc=0"], r"Expected ipc >= 1. Got 0 instead."),
        (["ipc=ten"], r"Expected ipc an integer. Got 'ten' instead."),
        (["mode=sre2l"], r"Expected mode one of \['class', 'class_global', 'mixed'\]"),
        (["crop_scale=[0.5]"], r"Expected crop_scale as a list of 2 values"),
        (["crop_scale=[0.9, 0.5]"], r"0 < lo <= hi <= 1"),
        (["amp=fp16"], r"Expected amp one of \['none', 'bf16'\]"),
        (["noequals"], r"Expected an override of the form key=value"),
    ],
)
def test_bad_overrides_are_explained(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_config(SynthesisConfig, SYNTHESIS_PRESETS, preset="demo", overrides=overrides)


def test_unknown_nested_key_names_its_path() -> None:
    with pytest.raises(ConfigError, match=r"Unknown key\(s\) \['teacher.arc'\]"):
        resolve_config(SqueezeConfig, SQUEEZE_PRESETS, preset="demo", overrides=["teacher.arc=resnet18"])


def test_bad_preset_and_file_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Expected a preset in \['demo'"):
        resolve_config(SynthesisConfig, SYNTHESIS_PRESETS, preset="cifar")
    with pytest.raises(ConfigError, match="Got no such file instead"):
        resolve_config(SynthesisConfig, SYNTHESIS_PRESETS, file=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="Expected a JSON object"):
        resolve_config(SynthesisConfig, SYNTHESIS_PRESETS, file=bad)


def test_missing_checkpoint_weights_are_explained() -> None:
    from lpld_pipeline import make_teacher

    cfg = SQUEEZE_PRESETS["tiny"].teacher
    with pytest.raises(ConfigError, match="needs a local checkpoint"):
        make_teacher(cfg, num_classes=200)


def test_unknown_architecture_is_explained() -> None:
    from lpld_pipeline import TeacherConfig, make_teacher

    with pytest.raises(ConfigError, match="Got 'resnet7' instead"):
        make_teacher(TeacherConfig(arch="resnet7", weights="random"), num_classes=10)
