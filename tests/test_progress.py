"""Progress bars with a rate and an ETA on the long commands; none with --quiet or off a terminal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_interop_roundtrip import SRE2L_PLAN
from test_interop_roundtrip import _store as sorted_store

from lpldstore import PruningPlan, prune, recode, verify_store
from lpldstore.cli import _progress, main
from lpldstore.interop import ImportOptions, export_store, import_labels
from lpldstore.testing import fill, make_store
from lpldstore.tools.derive import parse_codec
from lpldstore.tools.pack import pack_store, unpack_store


def _store(path: Path) -> Path:
    plan = PruningPlan(num_images=12, batch_size=5, epochs=3, seed=42, last_batch="pad", sampler="sre2l")
    with make_store(path, plan=plan, image_hw=(8, 8), output_size=(8, 8)) as writer:
        fill(writer)
    return path


def _operations(tmp: Path) -> dict[str, Callable[[], object]]:
    store = _store(tmp / "s.zarr")
    return {
        "verify entries": lambda: verify_store(store, progress=True),
        "prune": lambda: prune(store, tmp / "p.zarr", ratio=1.5, progress=True),
        "recode": lambda: recode(store, tmp / "r.zarr", codec=parse_codec("quantized:bits=4"), progress=True),
        "pack": lambda: pack_store(store, tmp / "s.zip", progress=True),
        "unpack": lambda: unpack_store(tmp / "s.zip", tmp / "u.zarr", progress=True),
        "export sre2l": lambda: export_store("sre2l", store, tmp / "labels", progress=True),
    }


def test_each_long_step_shows_a_bar_with_rate_and_eta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, run in _operations(tmp_path).items():
        run()
        err = capsys.readouterr().err
        assert f"{name}: 100%" in err, (name, err)
        assert "<00:00" in err or "/s]" in err, (name, err)  # tqdm's elapsed<remaining and rate


def test_import_and_image_export_show_their_bars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = sorted_store(tmp_path / "s.zarr", SRE2L_PLAN)  # images class by class, as --images needs
    export_store("sre2l", store, tmp_path / "labels", images=tmp_path / "images", progress=True)
    assert "export images: 100%" in capsys.readouterr().err
    import_labels("sre2l", tmp_path / "labels", tmp_path / "images", tmp_path / "i.zarr", ImportOptions())
    assert "import sre2l: 100%" in capsys.readouterr().err


def test_no_bar_off_a_terminal_or_with_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path / "s.zarr")
    assert main(["verify", str(store)]) == 0  # stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(_progress.sys.stderr, "isatty", lambda: True)
    assert main(["verify", str(store), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["pack", str(store), str(tmp_path / "s.zip")]) == 0
    assert "pack: 100%" in capsys.readouterr().err
