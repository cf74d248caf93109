"""``lpldstore card``: licence, citation, the run's student accuracy, no local paths, honest fidelity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lpldstore import ConfigError, PruningPlan
from lpldstore.cli import main
from lpldstore.testing import fill, make_store
from lpldstore.tools.card import CITATIONS, read_report, store_card

PLAN = PruningPlan(num_images=10, batch_size=4, epochs=2, ratio=2)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """An `lpld run` output: the store, and report.json beside it naming that store."""
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    config = {
        "stage": "relabel",
        "config": {"squeeze_dir": "/home/someone/runs/demo/squeeze", "out": str(run / "labels.zarr")},
        "mirror": "https://user:secret@example.org/pool.zip?token=abc",
        "windows": "C:\\Users\\someone\\teacher.pt",
    }
    with make_store(run / "labels.zarr", plan=PLAN, config=config) as writer:
        fill(writer)
    report = {
        "out": str(run),
        "top1": 0.4321,
        "best_top1": 0.45,
        "teacher_top1": 0.9,
        "num_classes": 5,
        "store_info": {"source": str(run / "labels.zarr")},
        "seconds": {},
        "skipped": [],
    }
    (run / "report.json").write_text(json.dumps(report))
    return run


def test_the_card_quotes_the_runs_accuracy_licence_and_citations(run_dir: Path) -> None:
    card = store_card(run_dir / "labels.zarr", license="cc-by-4.0", citation="@misc{mine, title={x}}")
    assert card.startswith("---\nlicense: cc-by-4.0\n")
    assert "| student top-1 on the real validation set | 43.21% |" in card
    assert "| teacher top-1 on the same set | 90.00% |" in card
    assert "| chance | 20.00% |" in card
    assert "@misc{mine, title={x}}" in card
    for entry in CITATIONS:
        assert entry in card
    # float16 is a rounding of the teacher's logits (measured by the writer only for lossy codecs).
    assert "lossless" not in card.replace("not lossless", "")
    assert "not lossless" in card or "max abs logit error" in card


def test_the_card_has_no_local_paths_or_url_secrets(run_dir: Path) -> None:
    card = store_card(run_dir / "labels.zarr")
    for secret in ("/home/someone", str(run_dir), "secret", "token=abc", "C:\\Users"):
        assert secret not in card
    assert '".../squeeze"' in card
    assert '"https://example.org/pool.zip"' in card
    assert '".../teacher.pt"' in card
    assert "license: unknown" in card
    assert "Not stated: pass `lpldstore card --license SPDX-ID`" in card


def test_a_report_of_another_store_is_not_quoted(run_dir: Path) -> None:
    data = json.loads((run_dir / "report.json").read_text())
    data["store_info"]["source"] = "elsewhere/other.zarr"
    (run_dir / "report.json").write_text(json.dumps(data))
    assert "## Student accuracy" not in store_card(run_dir / "labels.zarr")
    # Given explicitly, it is quoted: the user says it belongs.
    assert "## Student accuracy" in store_card(run_dir / "labels.zarr", report=run_dir / "report.json")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", "expected an lpld run report \\(JSON\\)"),
        ('{"top1": 3, "num_classes": 5}', "expected 'top1', an accuracy in \\[0, 1\\]"),
        ('{"top1": 0.5}', "expected 'num_classes'"),
    ],
)
def test_a_bad_report_is_refused(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "r.json").write_text(content)
    with pytest.raises(ConfigError, match=match):
        read_report(tmp_path / "r.json")


def test_cli_card_writes_the_file_whole(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_dir / "README.md"
    bib = run_dir / "dataset.bib"
    bib.write_text("@misc{demo, title={Demo}}\n")
    argv = [
        "card",
        str(run_dir / "labels.zarr"),
        "-o",
        str(out),
        "--license",
        "apache-2.0",
        "--citation",
        str(bib),
    ]
    assert main(argv) == 0
    text = out.read_text()
    assert "license: apache-2.0" in text
    assert "@misc{demo" in text
    assert not list(run_dir.glob(".README.md.partial"))
    assert main(["card", str(run_dir / "labels.zarr"), "--license", "CC BY 4.0"]) == 2
    assert "Expected a licence as an SPDX identifier" in capsys.readouterr().err
