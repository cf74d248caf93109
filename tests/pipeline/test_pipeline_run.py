"""lpld run end to end at a tiny size: every stage, the report, and a rerun that skips or resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lpld_pipeline.cli import main

from ._stores import one_thread  # noqa: F401  (autouse fixture)

TINY = [
    "--set", "squeeze.data.image_size=16", "--set", "squeeze.teacher.train_epochs=2",
    "--set", "squeeze.teacher.width=4", "--set", "synthesize.ipc=2", "--set", "synthesize.iterations=3",
    "--set", "relabel.epochs=4", "--set", "relabel.batch_size=5", "--set", "relabel.ratio=2",
    "--set", "train.epochs=2", "--set", "train.width=4", "--set", "train.val_interval=1",
]  # fmt: skip


def test_run_does_every_stage_and_prints_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["run", "--out", str(out), "--no-progress", "--device", "cpu", *TINY]) == 0
    captured = capsys.readouterr()
    text = captured.out
    headers = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert [h.split(":")[0] for h in headers] == [
        "[1/4] squeeze",
        "[2/4] synthesize",
        "[3/4] relabel",
        "[4/4] train",
    ]
    assert "resuming" not in captured.err
    assert "student top-1 on the real validation set" in text
    assert "chance 10.00%" in text
    assert "logits" in text  # the storage table, as `lpldstore info` prints it
    assert "8 of 16 entries kept, 8 committed" in text
    for stage in ("squeeze", "synthesize", "relabel", "train", "total"):
        assert f"  {stage}" in text
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["top1"] <= 1.0
    assert report["store_info"]["pruning"]["entries_kept"] == 8
    assert set(report["seconds"]) == {"squeeze", "synthesize", "relabel", "train", "total"}
    assert (out / "train" / "checkpoint.pt").is_file()

    # A rerun finds every output in place: squeeze and synthesize are skipped, relabel and train resume.
    assert main(["run", "--out", str(out), "--quiet", "--device", "cpu", *TINY]) == 0
    err = capsys.readouterr().err
    assert "squeeze: squeeze holds its output for this config; resuming at synthesize" in err
    assert "synthesize: synth holds its output for this config; resuming at relabel" in err
    assert "relabel: labels.zarr is complete; nothing to compute" in err
    assert "train: train is complete; nothing to train" in err
    again = json.loads((out / "report.json").read_text())
    assert again["skipped"] == ["squeeze", "synthesize"]
    assert again["top1"] == report["top1"]
