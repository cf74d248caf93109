"""The H200 suite stays runnable: its CPU dry run, every section, in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_suite_dry_run_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    # As documented: `python benchmarks/gpu_suite.py` from the repository root, nothing on PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--dry-run", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    sections = result["sections"]
    failed = {k: v["error"] for k, v in sections.items() if isinstance(v, dict) and "error" in v}
    assert failed == {}
    assert result["dry_run"] is True
    assert sections["environment"]["versions"]["zarr"]
    for run in ("gpu_marked", "pipeline_relabel_e2e"):
        assert sections["tests"][run]["returncode"] == 0, sections["tests"][run]["tail"]
    assert {r["way"] for r in sections["synthesis"]["rows"]} == {"one class per batch", "class-packed"}
    assert set(sections["relabel"]["entries_per_s"]) == {
        "bare teacher",
        "relabel_entries + StoreWriter",
        "GPU logits -> BackgroundWriter",
    }
    assert sections["loader"]["device_over_floor"] > 0
    assert sections["training"]["device_loader_over_tensors"] > 0
    assert len(sections["pretrained"]["fidelity"]) > 10
    assert sections["estimate"]["total_h"] > 0
    assert "loader_per_step" in sections["syncs"]


def test_the_suite_runs_every_gpu_marked_test_file() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_suite import GPU_TEST_FILES

    decorator = "@pytest.mark." + "gpu"  # spelled so that this file does not match itself
    marked = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if decorator in p.read_text()
    )
    assert marked == sorted(GPU_TEST_FILES)
