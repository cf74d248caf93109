"""Train: a few CPU steps lower the KD loss; a resumed run equals an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

import lpldstore
from lpld_pipeline import (
    ArtifactError,
    ConfigError,
    DataConfig,
    DataError,
    TrainConfig,
    build_student,
    kd_loss,
    load_student_checkpoint,
    lr_factor,
    relabel_entries,
    train,
)

from ._stores import (
    create_store,
    one_thread,  # noqa: F401  (autouse fixture)
    tiny_images,
    tiny_teacher,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    teacher, synth = tiny_teacher(), tiny_images()
    path = tmp_path_factory.mktemp("train") / "s.zarr"
    with create_store(path, teacher, synth) as writer:
        relabel_entries(writer, teacher, torch.from_numpy(synth.images))
    return path


def _config(store: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "store": str(store),
        "out": str(out),
        "model": "tiny_resnet",
        "width": 4,
        "epochs": 3,
        "temperature": 4.0,
        "t2": True,
        "lr": 0.01,
        "val": DataConfig(name="digits", batch_size=512),
        "val_interval": 100,
        "progress": False,
        "device": "cpu",
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _fixed_batch_loss(model: torch.nn.Module, store: Path) -> float:
    loader = lpldstore.PoolLoader(store, policy="sequential")
    batches = list(loader)
    model.eval()
    with torch.no_grad():
        return sum(float(kd_loss(model(b.images), b.logits, 4.0, t2=True)) for b in batches) / len(batches)


def test_a_few_cpu_steps_lower_the_loss(store: Path, tmp_path: Path) -> None:
    config = _config(store, tmp_path / "t")
    before = _fixed_batch_loss(build_student(config, 10), store)
    result = train(config)
    assert result.steps == 3 * 4  # 3 epochs x 4 stored batches per epoch (ilp)
    model = build_student(config, 10)
    model.load_state_dict(load_student_checkpoint(tmp_path / "t")["model"])
    after = _fixed_batch_loss(model, store)
    assert after < 0.9 * before
    lines = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["event"] == "epoch"] == [0, 1, 2]
    evals = [r for r in lines if r["event"] == "eval"]
    assert len(evals) == 1
    assert 0.0 <= evals[0]["top1"] == result.top1 <= 1.0
    assert json.loads((tmp_path / "t" / "train.json").read_text())["result"]["steps"] == 12


def test_resume_after_a_crash_gives_the_weights_of_an_uninterrupted_run(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = _config(store, tmp_path / "whole", checkpoint_every_steps=3, batch_size=3)
    train(whole)
    crashed = dataclasses.replace(whole, out=str(tmp_path / "crash"))

    def crash(step: int, loss: float) -> None:
        if step == 11:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, on_step=crash)
    saved = load_student_checkpoint(tmp_path / "crash")
    # The last checkpoint is mid-epoch: step 2 of epoch 1 (epochs of 7 steps: 20 samples / 3).
    assert (saved["global_step"], saved["epoch"], saved["loader"]["step"]) == (9, 1, 2)
    assert not saved["done"]
    capsys.readouterr()
    resumed = train(crashed)
    assert "train: resuming at step 9 (epoch 2 of 3)" in capsys.readouterr().err
    assert resumed.steps == train(whole).steps  # the finished run is not trained again
    assert "train: whole is complete; nothing to train" in capsys.readouterr().err
    a = load_student_checkpoint(tmp_path / "whole")["model"]
    b = load_student_checkpoint(tmp_path / "crash")["model"]
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)


def test_resume_refuses_another_config_and_train_refuses_an_incomplete_store(
    store: Path, tmp_path: Path
) -> None:
    config = _config(store, tmp_path / "t", epochs=1)
    train(config)
    with pytest.raises(ConfigError, match=r"Got different \['lr'\]"):
        train(dataclasses.replace(config, lr=0.5))
    teacher, synth = tiny_teacher(), tiny_images()
    with create_store(tmp_path / "partial.zarr", teacher, synth):
        pass
    out = tmp_path / "never"
    with pytest.raises(ArtifactError, match="0 of 8 entries committed"):
        train(_config(tmp_path / "partial.zarr", out))
    with pytest.raises(DataError, match=r"Expected val\.root"):
        train(_config(store, out, val=DataConfig(name="imagefolder")))
    assert not out.exists()


def test_kd_loss_and_schedules_follow_the_reference() -> None:
    s, t = torch.randn(4, 10), torch.randn(4, 10) * 5
    manual = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(s / 20, 1), torch.softmax(t / 20, 1))
    torch.testing.assert_close(kd_loss(s, t, 20.0, t2=False), manual)
    torch.testing.assert_close(kd_loss(s, t, 20.0, t2=True), manual * 400)
    smoothed = kd_loss(s, t, 20.0, t2=False, smoothing=0.2)
    torch.testing.assert_close(smoothed, kd_loss(s, 0.8 * t + 0.02, 20.0, t2=False))
    cosine = TrainConfig(epochs=300)
    assert lr_factor(cosine, 0) == 1.0
    assert math.isclose(lr_factor(cosine, 150), 0.5)
    warm = TrainConfig(epochs=100, schedule="warmup_cosine", warmup_epochs=5)
    assert math.isclose(lr_factor(warm, 0), 0.01)
    assert lr_factor(warm, 5) == 1.0
    with pytest.raises(ConfigError, match="warmup_epochs in"):
        TrainConfig(epochs=5, warmup_epochs=5)
