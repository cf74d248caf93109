"""The lpld command line never prints a traceback: one line on stderr and an exit status instead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import lpld_pipeline
import lpldstore
from lpld_pipeline import artifacts
from lpld_pipeline.cli import main


def _stage_raising(monkeypatch: pytest.MonkeyPatch, module: str, function: str, exc: BaseException) -> None:
    def fail(config: Any) -> None:
        raise exc

    monkeypatch.setattr(sys.modules[module], function, fail)


def test_a_missing_store_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "out"), "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-m", "lpld_pipeline.cli", "train", "--store", str(tmp_path / "missing"), *out],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"lpld train: error: No store at {tmp_path / 'missing'}: the path does not exist."
    ]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"lpld {lpldstore.__version__} (lpldstore {lpldstore.__version__}, format {lpldstore.FORMAT_VERSION})"
    )


@pytest.mark.parametrize(
    ("stage", "module", "function", "message"),
    [
        ("train", "lpld_pipeline.train", "train", "interrupted; rerun the same command to resume"),
        ("relabel", "lpld_pipeline.relabel", "relabel", "interrupted; rerun the same command to resume"),
        ("run", "lpld_pipeline.run", "run", "interrupted; rerun the same command to resume"),
        ("squeeze", "lpld_pipeline.bnstats", "squeeze", "interrupted"),
        (
            "synthesize",
            "lpld_pipeline.synthesize",
            "synthesize",
            "interrupted; rerun the same command to resume",
        ),
    ],
)
def test_ctrl_c_is_one_line_and_130(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stage: str,
    module: str,
    function: str,
    message: str,
) -> None:
    _stage_raising(monkeypatch, module, function, KeyboardInterrupt())
    assert main([stage, "--no-progress"]) == 130
    assert capsys.readouterr().err == f"lpld {stage}: {message}\n"


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (lpldstore.StoreDamagedError("chunk 3 fails its checksum"), "error: chunk 3 fails its checksum"),
        (lpld_pipeline.DataError("no images"), "error: no images"),
        (
            PermissionError(13, "Permission denied", "/ro/out"),
            "error: Permission denied: /ro/out",
        ),
        (
            ModuleNotFoundError("No module named 'torchvision'", name="torchvision"),
            "error: this command needs torchvision, which is not installed: pip install 'lpldstore[pipeline]'",
        ),
        (
            lpldstore.MissingDependencyError("install it with `pip install pyyaml`"),
            "error: install it with `pip install pyyaml`",
        ),
        (
            ZeroDivisionError("division by zero"),
            "internal error: ZeroDivisionError: division by zero (a bug; set LPLD_DEBUG=1 for the traceback)",
        ),
        (
            ModuleNotFoundError("No module named 'lpld_pipeline.gone'", name="lpld_pipeline.gone"),
            (
                "internal error: ModuleNotFoundError: No module named 'lpld_pipeline.gone' (a bug; set "
                "LPLD_DEBUG=1 for the traceback)"
            ),
        ),
    ],
)
def test_every_failure_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], exc: BaseException, line: str
) -> None:
    monkeypatch.delenv("LPLD_DEBUG", raising=False)
    _stage_raising(monkeypatch, "lpld_pipeline.train", "train", exc)
    assert main(["train", "--no-progress"]) == 2
    assert capsys.readouterr().err == f"lpld train: {line}\n"


def test_lpld_debug_adds_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LPLD_DEBUG", "1")
    _stage_raising(monkeypatch, "lpld_pipeline.train", "train", ZeroDivisionError("division by zero"))
    assert main(["train", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.endswith("(a bug; set LPLD_DEBUG=1 for the traceback)\n")


def test_a_yaml_config_without_pyyaml_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("ipc: 3\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` now raises ImportError
    assert main(["synthesize", "--config", str(config), "--print-config"]) == 2
    assert "is YAML, which needs PyYAML: install it with `pip install pyyaml`" in capsys.readouterr().err


def test_one_except_catches_either_packages_errors() -> None:
    assert lpld_pipeline.ConfigError is lpldstore.ConfigError
    assert lpld_pipeline.ArtifactError is lpldstore.ArtifactError
    assert issubclass(lpld_pipeline.PipelineError, lpldstore.LpldStoreError)
    assert issubclass(lpld_pipeline.DataError, ValueError)
    with pytest.raises(lpldstore.LpldStoreError):
        lpld_pipeline.SynthesisConfig(ipc=0)  # a pipeline config error
    with pytest.raises(lpldstore.ArtifactError):
        lpld_pipeline.load_class_stats("/nonexistent/bnstats.pt")  # a pipeline artifact error


def test_records_have_distinct_names_and_old_config_json_is_still_read(tmp_path: Path) -> None:
    names = {artifacts.record_name(s) for s in ("squeeze", "synthesize", "train")}
    assert len(names) == 3
    artifacts.write_record(tmp_path, "squeeze", {"config": {"seed": 1}})
    assert artifacts.read_record(tmp_path, "squeeze") == {"stage": "squeeze", "config": {"seed": 1}}
    assert artifacts.read_record(tmp_path, "train") is None
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"stage": "synthesize", "config": {"ipc": 3}}))
    assert artifacts.read_record(old, "synthesize") == {"stage": "synthesize", "config": {"ipc": 3}}
    assert artifacts.read_record(old, "squeeze") is None  # another stage's old record
    (old / "config.json").write_text("{not json")
    with pytest.raises(lpldstore.ArtifactError, match="Got an unreadable file"):
        artifacts.read_record(old, "synthesize")
