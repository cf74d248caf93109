"""squeeze and synthesize end to end on CPU on the built-in digits with a tiny teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lpld_pipeline import ArtifactError, load_class_stats, load_synthesized, load_teacher_checkpoint
from lpld_pipeline.cli import main

TINY = ["--set", "data.image_size=16", "--set", "teacher.train_epochs=4", "--set", "teacher.width=8"]


@pytest.fixture(scope="module")
def squeeze_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("squeeze")
    assert main(["squeeze", "--preset", "demo", "--out", str(out), "--no-progress", *TINY]) == 0
    return out


def test_squeeze_writes_stats_teacher_and_config(squeeze_dir: Path) -> None:
    record = json.loads((squeeze_dir / "squeeze.json").read_text())
    assert record["stage"] == "squeeze"
    assert record["config"]["data"]["image_size"] == 16
    assert record["teacher_val_accuracy"] > 0.5  # chance is 0.1
    stats = load_class_stats(squeeze_dir)
    teacher = load_teacher_checkpoint(squeeze_dir / "teacher.pt")
    stats.check_teacher(teacher)
    assert stats.class_names == tuple(str(i) for i in range(10))
    assert int(stats.images_per_class.sum()) == 1437  # the 80 % training split of 1,797 digits
    assert record["images_per_class"] == stats.images_per_class.tolist()
    first = stats.layers[0]
    assert stats.mean[first].shape == (10, 8)  # classes x the stem's width
    assert torch.all(stats.var[first] > 0)


def test_synthesize_writes_images_labels_imagefolder_and_config(squeeze_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    argv = ["synthesize", "--preset", "demo", "--squeeze-dir", str(squeeze_dir), "--out", str(out)]
    argv += ["--no-progress", "--set", "ipc=3", "--set", "iterations=8", "--set", "groups_per_batch=4"]
    assert main(argv) == 0
    result = load_synthesized(out)
    assert result.images.shape == (30, 16, 16, 3)
    assert result.images.dtype == np.uint8
    assert result.labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert result.indices.tolist() == [0, 1, 2] * 10
    record = json.loads((out / "synthesize.json").read_text())
    assert record["config"]["ipc"] == 3
    assert record["config"]["squeeze_dir"] == str(squeeze_dir)
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(out / "imagefolder"))
    assert len(folder) == 30
    assert folder.classes == [str(i) for i in range(10)]


def test_synthesize_refuses_a_teacher_that_is_not_the_squeezed_one(squeeze_dir: Path, tmp_path: Path) -> None:
    teacher = load_teacher_checkpoint(squeeze_dir / "teacher.pt")
    with torch.no_grad():
        next(teacher.model.parameters()).add_(1.0)
    from lpld_pipeline import save_teacher_checkpoint

    other = tmp_path / "other"
    other.mkdir()
    (other / "bnstats.pt").write_bytes((squeeze_dir / "bnstats.pt").read_bytes())
    save_teacher_checkpoint(teacher, other / "teacher.pt")
    from lpld_pipeline import SynthesisConfig, synthesize

    with pytest.raises(ArtifactError, match="rerun squeeze with this teacher"):
        synthesize(SynthesisConfig(squeeze_dir=str(other), iterations=1, progress=False))


def test_cli_reports_bad_input_without_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["synthesize", "--squeeze-dir", str(tmp_path), "--no-progress"]) == 2
    assert "run `lpld squeeze`" in capsys.readouterr().err
    assert main(["squeeze", "--set", "data.image_size=four"]) == 2
    assert "Expected data.image_size an integer. Got 'four' instead." in capsys.readouterr().err


def test_cli_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synthesize", "--preset", "imagenet1k", "--set", "ipc=50", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["ipc"] == 50
    assert config["lr"] == 0.25
    assert config["iterations"] == 4000
