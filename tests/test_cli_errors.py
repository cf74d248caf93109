"""The ``lpldstore`` command never prints a traceback: every failure is one line and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lpldstore import ArtifactError, MissingDependencyError, __version__
from lpldstore.cli import main
from lpldstore.cli._errors import EXIT_ERROR, EXIT_INTERRUPTED, run_command


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"lpldstore {__version__}"


def test_a_missing_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "nothing.zarr")]) == EXIT_ERROR
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("lpldstore info: error: No store at")
    assert "does not exist" in line


def test_verify_with_a_teacher_points_to_the_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(tmp_path / "s.zarr"), "--teacher", "t.pt"]) == EXIT_ERROR
    line = _one_line(capsys.readouterr().err)
    assert f"run `lpld verify {tmp_path / 's.zarr'} --teacher t.pt` instead" in line


@pytest.mark.parametrize(
    ("failure", "status", "message"),
    [
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "lpldstore x: interrupted; rerun to resume"),
        (ArtifactError("the zip is damaged"), EXIT_ERROR, "lpldstore x: error: the zip is damaged"),
        (
            PermissionError(13, "Permission denied", "/root/x"),
            EXIT_ERROR,
            "error: Permission denied: /root/x",
        ),
        (MemoryError(), EXIT_ERROR, "lpldstore x: error: out of memory"),
        (
            ModuleNotFoundError("No module named 'torch'", name="torch"),
            EXIT_ERROR,
            "needs torch, which is not installed: pip install 'lpldstore[torch]'",
        ),
        (
            ModuleNotFoundError("No module named 's3fs'", name="s3fs"),
            EXIT_ERROR,
            "needs s3fs, which is not installed: pip install s3fs",
        ),
        (
            MissingDependencyError("x needs torch: pip install 'lpldstore[torch]'"),
            EXIT_ERROR,
            "x needs torch",
        ),
        (RuntimeError("boom"), EXIT_ERROR, "internal error: RuntimeError: boom (a bug; set LPLD_DEBUG=1"),
        (
            ImportError("cannot import name 'x' from 'lpldstore'", name="lpldstore"),
            EXIT_ERROR,
            "internal error",
        ),
    ],
)
def test_every_failure_is_one_line(
    failure: BaseException, status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def run() -> int:
        raise failure

    assert run_command("lpldstore", "x", run, interrupted_hint="rerun to resume") == status
    assert message in _one_line(capsys.readouterr().err)


def test_ctrl_c_of_a_real_process_is_one_line(tmp_path: Path) -> None:
    # SIGINT in the middle of a command: the process exits 130 with one line and no traceback.
    code = (
        "import os, signal, sys\n"
        "from lpldstore.cli._errors import run_command\n"
        "def run():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return 0\n"
        "sys.exit(run_command('lpldstore', 'pack', run))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == EXIT_INTERRUPTED
    assert _one_line(done.stderr) == "lpldstore pack: interrupted"
