"""Every ``lpldstore`` subcommand on bad input: one line naming the problem, exit status 2 (1 for a
failed verify), no traceback, and nothing written (the working tree compared byte for byte)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lpldstore import PruningPlan
from lpldstore.cli import main
from lpldstore.interop._common import replay_sampler
from lpldstore.testing import fill, make_store
from lpldstore.tools.pack import checksum_path, pack_store


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("ran code from a pickle",))


def _images(root: Path, hw: tuple[int, int], *, odd_one: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            size = (hw[0] + 2, hw[1]) if odd_one and c == "c" and i == 3 else hw
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _sre2l(src: Path, *, evil: bool = False) -> Path:
    rng = np.random.default_rng(1)
    for e, batches in enumerate(replay_sampler(12, 5, 1)):
        (src / f"epoch_{e}").mkdir(parents=True)
        for b, ids in enumerate(batches):
            n = len(ids)
            record: list[Any] = [
                torch.FloatTensor([(0.0, 0.0, 1.0, 1.0)] * n),
                torch.zeros(n, dtype=torch.bool),
                None,
                None,
                None,
                torch.from_numpy(rng.standard_normal((n, 3)).astype(np.float16)),
            ]
            torch.save([_Evil()] if evil and b == 1 else record, src / f"epoch_{e}" / f"batch_{b}.tar")
    return src


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    with make_store(root / "s.zarr", plan=PruningPlan(num_images=10, batch_size=4, epochs=2)) as writer:
        fill(writer)
    with make_store(root / "open.zarr", plan=PruningPlan(num_images=10, batch_size=4, epochs=2)) as writer:
        fill(writer, limit=1)
    pack_store(root / "s.zarr", root / "s.zip")
    shutil.copy(root / "s.zip", root / "bad.zip")
    checksum_path(root / "bad.zip").write_text("0" * 64 + "  bad.zip\n")
    (root / "text.zip").write_text("not a zip")
    (root / "file.txt").write_text("a file")
    (root / "empty").mkdir()
    (root / "exists").mkdir()
    _images(root / "square", (8, 8))
    _images(root / "wide", (8, 12))
    _images(root / "mixed", (8, 8), odd_one=True)
    _sre2l(root / "sre2l")
    _sre2l(root / "evil", evil=True)
    _sre2l(root / "lpld")
    (root / "lpld" / "sampler_indices_epoch.json").write_text(
        json.dumps({"0": [i for b in next(iter(replay_sampler(12, 5, 1))) for i in b]})
    )
    (root / "r.json").write_text("{")
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} | {
        str(p.relative_to(root)) + "/": b"" for p in sorted(root.rglob("*")) if p.is_dir()
    }


W = "{w}"  # replaced by the world directory
CASES: list[tuple[str, list[str], str]] = [
    # info (and every store-reading command): locations that are not stores
    ("info-missing", ["info", f"{W}/nothing.zarr"], "No store at"),
    ("info-file", ["info", f"{W}/file.txt"], "Expected a store directory or a .zip of one"),
    ("info-empty-dir", ["info", f"{W}/empty"], "holds no Zarr v3 group"),
    (
        "info-s3",
        ["info", "s3://bucket/pool.zarr"],
        "s3:// URLs need an fsspec back-end that is not installed",
    ),
    ("info-hf", ["info", "hf://datasets/me/pool/pool.zip"], "pip install huggingface-hub"),
    ("info-gs", ["info", "gs://bucket/pool.zarr"], "pip install gcsfs"),
    ("info-protocol", ["info", "nope://x/pool.zarr"], "Expected a URL whose protocol fsspec knows"),
    ("info-memory", ["info", "memory://nothing/pool.zarr"], "holds no Zarr v3 group"),
    ("info-bad-zip", ["info", f"{W}/text.zip"], "zip"),
    ("verify-teacher", ["verify", f"{W}/s.zarr", "--teacher", "t.pt"], "run `lpld verify"),
    # card
    (
        "card-license",
        ["card", f"{W}/s.zarr", "--license", "CC BY"],
        "Expected a licence as an SPDX identifier",
    ),
    (
        "card-citation",
        ["card", f"{W}/s.zarr", "--citation", f"{W}/none.bib"],
        "Expected --citation to name a BibTeX",
    ),
    ("card-report", ["card", f"{W}/s.zarr", "--report", f"{W}/r.json"], "expected an lpld run report (JSON)"),
    (
        "card-out-dir",
        ["card", f"{W}/s.zarr", "-o", f"{W}/no/such/dir/README.md"],
        "Expected -o to name a file in an existing directory",
    ),
    # pack / unpack
    ("pack-not-zip", ["pack", f"{W}/s.zarr", f"{W}/out.tar"], "Expected an output name ending in .zip"),
    ("pack-exists", ["pack", f"{W}/s.zarr", f"{W}/s.zip"], "already exists"),
    ("pack-incomplete", ["pack", f"{W}/open.zarr", f"{W}/o.zip"], "uncommitted entries"),
    ("pack-missing", ["pack", f"{W}/nothing.zarr", f"{W}/o.zip"], "Expected a store directory to pack"),
    ("unpack-missing", ["unpack", f"{W}/nothing.zip", f"{W}/u"], "Expected a packed store (.zip)"),
    ("unpack-checksum", ["unpack", f"{W}/bad.zip", f"{W}/u"], "the file is damaged or was changed"),
    ("unpack-not-zip", ["unpack", f"{W}/text.zip", f"{W}/u"], "expected a zip file"),
    ("unpack-exists", ["unpack", f"{W}/s.zip", f"{W}/exists"], "already exists"),
    # prune / recode
    (
        "prune-ratio",
        ["prune", f"{W}/s.zarr", f"{W}/p.zarr", "--ratio", "0.5"],
        "plan.ratio must be a real number >= 1",
    ),
    ("prune-ratio-huge", ["prune", f"{W}/s.zarr", f"{W}/p.zarr", "--ratio", "1e9"], "keeps no entry"),
    ("prune-budget-unit", ["prune", f"{W}/s.zarr", f"{W}/p.zarr", "--budget", "12XB"], "12XB"),
    ("prune-budget-small", ["prune", f"{W}/s.zarr", f"{W}/p.zarr", "--budget", "10B"], "does not fit"),
    ("prune-exists", ["prune", f"{W}/s.zarr", f"{W}/exists", "--ratio", "2"], "already exists"),
    ("prune-incomplete", ["prune", f"{W}/open.zarr", f"{W}/p.zarr", "--ratio", "2"], "not committed"),
    ("recode-codec", ["recode", f"{W}/s.zarr", f"{W}/r.zarr", "--codec", "zfp"], "name must be one of"),
    ("recode-bits", ["recode", f"{W}/s.zarr", f"{W}/r.zarr", "--codec", "quantized:bits=99"], "bits"),
    ("recode-syntax", ["recode", f"{W}/s.zarr", f"{W}/r.zarr", "--codec", "quantized:bits"], "key=value"),
    (
        "recode-temperature",
        ["recode", f"{W}/s.zarr", f"{W}/r.zarr", "--codec", "quantized:bits=4", "--temperature", "-1"],
        "temperature must be a positive number",
    ),
    # upgrade
    ("upgrade-current", ["upgrade", f"{W}/s.zarr", f"{W}/u.zarr"], "already format version 3"),
    ("upgrade-exists", ["upgrade", f"{W}/s.zarr", f"{W}/exists"], "already exists"),
    ("upgrade-missing", ["upgrade", f"{W}/nothing.zarr", f"{W}/u.zarr"], "No store at"),
    # import
    (
        "import-src",
        ["import", "--from", "sre2l", f"{W}/none", "--images", f"{W}/square", f"{W}/i.zarr"],
        "Got no such directory",
    ),
    (
        "import-images",
        ["import", "--from", "sre2l", f"{W}/sre2l", "--images", f"{W}/none", f"{W}/i.zarr"],
        "ImageFolder",
    ),
    (
        "import-exists",
        ["import", "--from", "sre2l", f"{W}/sre2l", "--images", f"{W}/square", f"{W}/exists"],
        "already exists",
    ),
    (
        "import-wrong-from",
        ["import", "--from", "sre2l", f"{W}/lpld", "--images", f"{W}/square", f"{W}/i.zarr"],
        "--from lpld",
    ),
    (
        "import-store-src",
        ["import", "--from", "sre2l", f"{W}/s.zarr", "--images", f"{W}/square", f"{W}/i.zarr"],
        "needs no import",
    ),
    (
        "import-size",
        ["import", "--from", "sre2l", f"{W}/sre2l", "--images", f"{W}/wide", f"{W}/i.zarr"],
        "not square",
    ),
    (
        "import-mixed",
        ["import", "--from", "sre2l", f"{W}/sre2l", "--images", f"{W}/mixed", f"{W}/i.zarr"],
        "images of one size",
    ),
    (
        "import-std",
        [
            "import",
            "--from",
            "sre2l",
            f"{W}/sre2l",
            "--images",
            f"{W}/square",
            f"{W}/i.zarr",
            "--std",
            "0",
            "0",
            "0",
        ],
        "Expected std to be three positive numbers",
    ),
    (
        "import-output-size",
        [
            "import",
            "--from",
            "sre2l",
            f"{W}/sre2l",
            "--images",
            f"{W}/square",
            f"{W}/i.zarr",
            "--output-size",
            "0",
        ],
        "Expected output_size",
    ),
    (
        "import-pickle",
        ["import", "--from", "sre2l", f"{W}/evil", "--images", f"{W}/square", f"{W}/i.zarr"],
        "refused to unpickle",
    ),
    # export
    ("export-exists", ["export", "--to", "lpld", f"{W}/s.zarr", f"{W}/exists"], "already exists"),
    (
        "export-images-exist",
        ["export", "--to", "lpld", f"{W}/s.zarr", f"{W}/e", "--images", f"{W}/exists"],
        "already exists",
    ),
    ("export-composition", ["export", "--to", "sre2l", f"{W}/s.zarr", f"{W}/e"], "--to lpld"),
    (
        "export-incomplete",
        ["export", "--to", "lpld", f"{W}/open.zarr", f"{W}/e"],
        "expected a complete store",
    ),
    ("export-missing", ["export", "--to", "lpld", f"{W}/nothing.zarr", f"{W}/e"], "No store at"),
    (
        "export-unsorted-images",
        ["export", "--to", "lpld", f"{W}/s.zarr", f"{W}/e", "--images", f"{W}/im"],
        "class by class",
    ),
]


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    world: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(world)
    args = [a.replace(W, str(world)) for a in argv]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"lpldstore {args[0]}: error: ")
    assert message in lines[0]
    assert "ran code from a pickle" not in captured.out
    assert _snapshot(world) == before


def test_verify_reports_a_missing_store_with_status_1(
    world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(world / "nothing.zarr")]) == 1
    out = capsys.readouterr()
    assert "No store at" in out.out
    assert "Traceback" not in out.err


ARGPARSE: list[tuple[str, list[str]]] = [
    ("no-command", []),
    ("unknown-command", ["frobnicate"]),
    ("import-no-from", ["import", "src", "--images", "i", "out"]),
    ("import-bad-from", ["import", "--from", "hf", "src", "--images", "i", "out"]),
    ("import-mean-two", ["import", "--from", "sre2l", "s", "--images", "i", "o", "--mean", "0.5", "0.5"]),
    ("prune-both", ["prune", "s", "o", "--ratio", "2", "--budget", "1MB"]),
    ("prune-ratio-text", ["prune", "s", "o", "--ratio", "two"]),
    ("export-bad-to", ["export", "--to", "fkd", "s", "o"]),
]


@pytest.mark.parametrize("argv", [a for _, a in ARGPARSE], ids=[n for n, _ in ARGPARSE])
def test_usage_errors_exit_2_with_usage_and_no_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error:" in err
    assert list(tmp_path.iterdir()) == []


def test_every_subcommand_is_covered() -> None:
    import argparse

    from lpldstore.cli import _parser

    actions = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(actions[0].choices)
    covered = {argv[0] for _, argv, _ in CASES}
    assert commands == covered | {"verify"}
