"""Feedback at the terminal: Ctrl-C in a real `lpld run`, `--quiet`, and the teacher's progress bar."""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lpld_pipeline import (
    SynthesisConfig,
    TeacherConfig,
    load_synthesized,
    make_teacher,
    save_class_stats,
    save_teacher_checkpoint,
    synthesize,
)
from lpld_pipeline.cli import main
from lpld_pipeline.data import ImageDataset

from ._stores import one_thread  # noqa: F401  (autouse fixture)
from .conftest import make_tiny_teacher, random_class_stats
from .test_pipeline_run import TINY

ROOT = Path(__file__).resolve().parents[2]
# The module (the package's `synthesize` attribute is the stage function of the same name).
synthesis = importlib.import_module("lpld_pipeline.synthesize")


def test_ctrl_c_in_a_real_lpld_run_is_one_line_and_a_rerun_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    # Enough training that the signal, sent as relabel starts, lands before the run ends.
    longer = ["--set", "train.epochs=30", "--set", "train.val_interval=10"]
    argv = ["run", "--out", str(out), "--quiet", "--device", "cpu", *TINY, *longer, "--set", "threads=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LPLD_DEBUG", None)
    with subprocess.Popen(
        [sys.executable, "-m", "lpld_pipeline.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + 120
        # Interrupt once relabel has begun: squeeze and synthesize are then finished and recorded.
        for line in proc.stderr:
            seen.append(line.rstrip("\n"))
            if line.startswith("[3/4] relabel") or time.monotonic() > deadline:
                break
        assert seen, "no output"
        assert seen[-1].startswith("[3/4] relabel"), seen
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1] == "lpld run: interrupted; rerun the same command to resume"

    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "resuming at synthesize" in err
    assert "resuming at relabel" in err
    assert json.loads((out / "report.json").read_text())["skipped"] == ["squeeze", "synthesize"]


def test_quiet_turns_the_bars_off(capsys: pytest.CaptureFixture[str]) -> None:
    for stage in ("squeeze", "synthesize", "relabel", "train", "run"):
        assert main([stage, "--quiet", "--print-config"]) == 0
        assert json.loads(capsys.readouterr().out)["progress"] is False
        assert main([stage, "--print-config"]) == 0
        assert json.loads(capsys.readouterr().out)["progress"] is True


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress", [True, False])
def test_teacher_training_shows_a_bar_with_its_steps(monkeypatch: pytest.MonkeyPatch, progress: bool) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    images = torch.randint(0, 256, (12, 8, 8, 3), dtype=torch.uint8).numpy()
    data = ImageDataset(images, torch.arange(12).remainder(3).numpy(), ("a", "b", "c"))
    config = TeacherConfig(width=2, train_epochs=2, train_batch_size=4)
    make_teacher(config, num_classes=3, train_data=data, progress=progress)
    text = terminal.getvalue()
    if progress:
        assert "teacher" in text
        assert "6/6" in text  # 2 epochs of 3 batches, and the bar shows the total for its ETA
    else:
        assert text == ""


def _squeeze_dir(root: Path) -> Path:
    teacher = make_tiny_teacher(num_classes=3)
    squeeze_dir = root / "squeeze"
    squeeze_dir.mkdir(parents=True)
    save_teacher_checkpoint(teacher, squeeze_dir / "teacher.pt")
    save_class_stats(random_class_stats(teacher, 12), squeeze_dir / "bnstats.pt")
    return squeeze_dir


def test_an_interrupted_synthesis_resumes_and_ends_with_the_same_images_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    squeeze_dir = _squeeze_dir(tmp_path)
    # 3 classes x 2 images, one image per group and per batch: 6 batches.
    base = SynthesisConfig(
        squeeze_dir=str(squeeze_dir), ipc=2, group_size=1, iterations=3, lr=0.1, progress=False, device="cpu"
    )
    whole = synthesize(dataclasses.replace(base, out=str(tmp_path / "whole")))

    real = synthesis._optimize
    calls = 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthesis, "_optimize", counted)
    out = tmp_path / "resumed"
    interrupt_at = 3  # Ctrl-C during the third batch: two are finished
    with pytest.raises(KeyboardInterrupt):
        synthesize(dataclasses.replace(base, out=str(out)))
    assert sorted(p.name for p in (out / ".partial" / "rank000-of-001").glob("batch-*")) == [
        "batch-000000.npy",
        "batch-000001.npy",
    ]
    assert not (out / "images.npz").exists()
    capsys.readouterr()

    calls, interrupt_at = 0, 0
    resumed = synthesize(dataclasses.replace(base, out=str(out)))
    assert calls == 4  # only the batches still to do
    assert "synthesize: resuming: 2 of 6 batches are done; skipping them" in capsys.readouterr().err
    np.testing.assert_array_equal(resumed.images, whole.images)
    np.testing.assert_array_equal(load_synthesized(out).images, load_synthesized(tmp_path / "whole").images)
    assert not (out / ".partial").exists()


def test_partial_synthesis_of_another_config_is_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    squeeze_dir = _squeeze_dir(tmp_path)
    base = SynthesisConfig(
        squeeze_dir=str(squeeze_dir),
        ipc=1,
        iterations=2,
        lr=0.1,
        progress=False,
        device="cpu",
        out=str(tmp_path / "o"),
    )
    real = synthesis._optimize
    calls = 0

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthesis, "_optimize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(base)
    monkeypatch.setattr(synthesis, "_optimize", real)
    capsys.readouterr()
    other = dataclasses.replace(base, iterations=3)
    result = synthesize(other)
    err = capsys.readouterr().err
    assert "synthesize: discarding the partial output of another config in .partial" in err
    assert "resuming" not in err
    fresh = synthesize(dataclasses.replace(other, out=str(tmp_path / "fresh")))
    np.testing.assert_array_equal(result.images, fresh.images)
