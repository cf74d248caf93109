"""Feedback at the terminal: Ctrl-C in a real `lpld run`, `--quiet`, and the teacher's progress bar."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lpld_pipeline import TeacherConfig, make_teacher
from lpld_pipeline.cli import main
from lpld_pipeline.data import ImageDataset

from ._stores import one_thread  # noqa: F401  (autouse fixture)
from .test_pipeline_run import TINY

ROOT = Path(__file__).resolve().parents[2]


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
