from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lpldstore import Layout, PruningPlan, RelabelConfig, open_store, peer_layout_bytes
from lpldstore.cli import main
from lpldstore.testing import fill, make_store

PLAN = PruningPlan(
    num_images=30, batch_size=4, epochs=12, ratio=4, strategy="random", seed=3, last_batch="pad"
)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "s.zarr"
    with make_store(path, plan=PLAN, num_classes=7, layout=Layout(block_entries=4)) as writer:
        fill(writer)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_info_json_contract(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "info", str(store_path), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["format_version"] == 3
    assert info["dataset"]["num_classes"] == 7
    assert info["pruning"] | {"actual_ratio": None} == {
        "strategy": "random",
        "ratio": 4,
        "actual_ratio": None,
        "seed": 3,
        "entries_kept": PLAN.num_kept,
        "entries_planned": PLAN.total_entries,
        "entries_committed": PLAN.num_kept,
    }
    sizes = info["storage_bytes"]
    components = [
        "images",
        "batch_indices",
        "crop_boxes",
        "flips",
        "cutmix_index",
        "cutmix_lambda",
        "cutmix_box",
        "logits",
        "metadata",
    ]
    assert list(sizes) == [*components, "total"]
    assert sizes["total"] == sum(sizes[c] for c in components)
    on_disk = sum(f.stat().st_size for f in store_path.rglob("*") if f.is_file())
    assert sizes["total"] == on_disk
    assert info["peer_layout_bytes"]["num_files"] == PLAN.num_kept


def test_info_text_has_the_storage_table(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(capsys, "info", str(store_path))
    assert code == 0
    assert "random x4" in out
    assert "logits" in out
    assert "SRe2L/LPLD per-batch torch.save layout" in out


def test_verify_passes_then_names_damaged_entries(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, "verify", str(store_path), "--json")
    assert code == 0
    assert json.loads(out)["ok"] is True
    with open_store(store_path) as store:
        e, b = store.keys[1].tolist()
    chunk = store_path / "pool" / "logits" / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-10] ^= 0x01
    chunk.write_bytes(bytes(data))
    crop_chunk = store_path / "pool" / "crop" / "c" / "1" / "0" / "0"  # block 1 = positions 4..7
    crop_chunk.unlink()
    code, out = _run(capsys, "verify", str(store_path), "--json")
    report = json.loads(out)
    assert code == 1
    assert report["ok"] is False
    logits_problems = [p for p in report["problems"] if p["array"] == "pool/logits"]
    assert [(p["epoch"], p["batch"]) for p in logits_problems] == [(e, b)]
    assert "checksum" in logits_problems[0]["message"]
    crop_problems = {(p["epoch"], p["batch"]) for p in report["problems"] if p["array"] == "pool/crop"}
    with open_store(store_path) as store:
        assert crop_problems == {tuple(k) for k in store.keys[4:8].tolist()}


def test_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "the path does not exist" in capsys.readouterr().err
    code, out = _run(capsys, "verify", str(tmp_path / "missing"))
    assert code == 1
    assert "the path does not exist" in out


@pytest.mark.parametrize("mix", ["cutmix", "none"])
def test_peer_bytes_equal_really_written_lpld_files(mix: str) -> None:
    # Write the peers' files for real, exactly as their relabel code does, and compare sizes.
    plan = PruningPlan(
        num_images=22, batch_size=4, epochs=13, ratio=3, strategy="random", seed=1, last_batch="pad"
    )
    relabel = RelabelConfig(output_size=(8, 8), mix=mix)  # type: ignore[arg-type]
    classes = 9
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sidecar: dict[str, list[int]] = {}
        for e, b in plan.kept_keys.tolist():
            n = plan.batch_length(b)
            (root / f"epoch_{e}").mkdir(exist_ok=True)
            record: list[object] = [
                torch.rand(n, 4),
                torch.rand(n) < 0.5,
                torch.randperm(n) if mix != "none" else None,
                0.25 if mix != "none" else None,
                [np.int64(1), np.int64(2), np.int64(3), np.int64(4)] if mix != "none" else None,
                torch.randn(n, classes).half(),
            ]
            torch.save(record, root / f"epoch_{e}" / f"batch_{b}.tar")
            sidecar.setdefault(str(e), []).extend(plan.batch_indices(e, b).tolist())
        files = sum(f.stat().st_size for f in root.rglob("*.tar"))
        sidecar_bytes = len(json.dumps(sidecar))
    got = peer_layout_bytes(plan, relabel, classes)
    assert got["files"] == files
    assert got["lpld_sidecar"] == sidecar_bytes
    assert got["total"] == files + sidecar_bytes


def test_a_closed_output_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    # `lpldstore info STORE | head -1`: no BrokenPipeError traceback on stderr. The parent closes
    # its end before the child (still importing torch) writes anything, so the write always fails.
    store = tmp_path / "s.zarr"
    with make_store(store, plan=PruningPlan(num_images=8, batch_size=4, epochs=2)) as writer:
        fill(writer)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpldstore.cli", "info", str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait() == 1
    assert "Traceback" not in err
    assert "BrokenPipe" not in err
