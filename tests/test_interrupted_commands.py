"""The derived-artifact commands as real processes, killed with SIGKILL part-way, then run again.

Each of ``prune`` (by ratio and by byte budget), ``recode``, ``import``, ``export``, ``pack`` and
``unpack`` runs as ``python -m lpldstore.cli`` and is killed at a seeded random moment 0-50 ms
after its hidden staging output appears, so that the kill lands mid-work. Afterwards the
output path holds nothing, or (a kill after the final rename) a complete artifact equal to an
uninterrupted run; running the command again then succeeds and gives that same artifact.
``LPLD_KILL_TRIALS=N`` adds N - 1 kills per command at random moments 0.3-2 s from its start.
"""

from __future__ import annotations

import filecmp
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lpldstore import open_store
from lpldstore.cli import main
from lpldstore.errors import ValidationError
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import CodecConfig, Layout
from lpldstore.interop import ImportOptions, export_store, import_labels
from lpldstore.interop._common import replay_sampler
from lpldstore.testing import different_entries, fill, make_store
from lpldstore.tools.budget import plan_for_budget
from lpldstore.tools.derive import parse_codec, prune, recode
from lpldstore.tools.pack import check_zip_checksum, checksum_path, pack_store, unpack_store
from lpldstore.tools.sizes import storage_bytes
from lpldstore.tools.verify import verify_store

# Kills per command at a random moment from its start, on top of the one in its staging window.
EXTRA_TRIALS = max(0, int(os.environ.get("LPLD_KILL_TRIALS", "1")) - 1)
PLAN = PruningPlan(num_images=64, batch_size=4, epochs=6, ratio=1.0)
IMG_HW, IMPORT_EPOCHS, IMPORT_BATCH = (16, 12), 30, 5


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete parent store (one file per entry and per block: many files to copy) and a peer dir."""
    root = tmp_path_factory.mktemp("interrupted")
    with make_store(
        root / "parent.zarr", plan=PLAN, num_classes=50, image_hw=(32, 32), layout=Layout(block_entries=2)
    ) as writer:
        fill(writer)
    _peer_dir(root)
    return root


def _peer_dir(root: Path) -> None:
    """A small SRe2L label directory and its ImageFolder, written the way SRe2L writes them."""
    rng = np.random.default_rng(0)
    for cls in ("n01", "n02", "n03"):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (*IMG_HW, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / cls / f"img{i}.png")
    h, w = IMG_HW
    for e, batches in enumerate(replay_sampler(12, IMPORT_BATCH, IMPORT_EPOCHS)):
        (root / "labels" / f"epoch_{e}").mkdir(parents=True)
        for b, ids in enumerate(batches):
            n = len(ids)
            coords = [(0.0, 0.0, float(rng.integers(1, h + 1)) / h, float(rng.integers(1, w + 1)) / w)] * n
            record = [
                torch.FloatTensor(coords),
                torch.tensor([bool(f) for f in rng.random(n) < 0.5]),
                None,
                None,
                None,
                torch.from_numpy(rng.standard_normal((n, 3)).astype(np.float16)),
            ]
            torch.save(record, root / "labels" / f"epoch_{e}" / f"batch_{b}.tar")


def _staged(out: Path) -> bool:
    return any(out.parent.glob(f".{out.name}.*"))


def _interrupt(args: list[str], out: Path, *, at_staging: bool, delay: float) -> tuple[bool, bool]:
    """Run ``lpldstore ARGS``; SIGKILL it ``delay`` s after its staging output appears (or after start).

    Returns (killed, staging seen before the kill).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "lpldstore.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seen = False
    try:
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() - start < 120:
            seen = seen or _staged(out)
            if (seen or not at_staging) and time.monotonic() - start >= (0 if at_staging else delay):
                if at_staging:
                    time.sleep(delay)
                break
            time.sleep(0.002)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        assert killed or proc.returncode == 0, err.decode()
        return killed, seen
    finally:
        if proc.poll() is None:  # pragma: no cover - only if an assertion above fired mid-run
            proc.kill()
            proc.wait()


def _check(
    args: list[str],
    out: Path,
    rerun: Callable[[], object],
    same: Callable[[Path], bool],
    absent: Callable[[Path], bool],
    seed: int,
) -> None:
    """Kill ``args`` at staging and at random moments; each time check ``out`` and run again."""
    rng = np.random.default_rng(seed)
    moments = [(True, float(rng.uniform(0.0, 0.05)))]
    moments += [(False, float(rng.uniform(0.3, 2.0))) for _ in range(EXTRA_TRIALS)]
    staged_kills = 0
    for at_staging, delay in moments:
        killed, seen = _interrupt(args, out, at_staging=at_staging, delay=delay)
        staged_kills += killed and seen
        if absent(out):
            rerun()  # the leftover staging output does not block a new run
        assert same(out), f"{args} killed={killed} at_staging={at_staging} delay={delay:.3f}"
        _remove(out)
    assert staged_kills >= 1, f"no kill of {args[0]} landed while its staging output existed"


def _remove(out: Path) -> None:
    for path in (out, checksum_path(out)):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _absent(out: Path) -> bool:
    # A kill after the final rename leaves the finished artifact, which `same` then checks whole.
    return not out.exists()


def _same_store(reference: Path) -> Callable[[Path], bool]:
    def same(out: Path) -> bool:
        return verify_store(out).ok and different_entries(out, reference) == []

    return same


def test_killed_prune_and_recode_leave_no_store_and_run_again(work: Path, tmp_path: Path) -> None:
    parent = work / "parent.zarr"
    cases: list[tuple[list[str], Callable[[Path], object], int]] = [
        (["prune", str(parent), "--ratio", "2"], lambda o: prune(parent, o, ratio=2.0), 1),
        (["recode", str(parent), "--codec", "quantized:bits=4"], lambda o: recode(parent, o, codec=_q4()), 2),
    ]
    sizes = _sizes(parent)
    budget = sizes[0] + sizes[1] // 2
    cases.append(
        (["prune", str(parent), "--budget", str(budget)], lambda o: prune(parent, o, budget=budget), 3)
    )
    for args, run, seed in cases:
        reference = tmp_path / f"reference-{seed}.zarr"
        run(reference)
        out = tmp_path / f"out-{seed}.zarr"
        cmd = [args[0], args[1], str(out), *args[2:]]
        _check(cmd, out, functools.partial(run, out), _same_store(reference), _absent, seed)


def _q4() -> CodecConfig:
    return parse_codec("quantized:bits=4")


def _sizes(store: Path) -> tuple[int, int]:
    with open_store(store) as s:
        sizes = storage_bytes(s)
    fixed = sizes["images"] + sizes["metadata"]
    return fixed, sizes["total"] - fixed


def test_killed_import_and_export_leave_nothing_and_run_again(work: Path, tmp_path: Path) -> None:
    options = ImportOptions(output_size=(8, 8))
    src, images = work / "labels", work / "images"

    def run_import(o: Path) -> object:
        return import_labels("sre2l", src, images, o, options, progress=False)

    reference = tmp_path / "imported.zarr"
    run_import(reference)
    out = tmp_path / "out.zarr"
    args = ["import", "--from", "sre2l", str(src), "--images", str(images), str(out), "--output-size", "8"]
    _check([*args, "--quiet"], out, lambda: run_import(out), _same_store(reference), _absent, seed=4)

    exported = tmp_path / "exported"
    export_store("sre2l", reference, exported)

    def same_files(o: Path) -> bool:
        cmp = filecmp.dircmp(o, exported)
        return _no_diff(cmp)

    out_dir = tmp_path / "back"
    _check(
        ["export", "--to", "sre2l", str(reference), str(out_dir)],
        out_dir,
        lambda: export_store("sre2l", reference, out_dir),
        same_files,
        _absent,
        seed=5,
    )


def _no_diff(cmp: filecmp.dircmp[str]) -> bool:
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_no_diff(sub) for sub in cmp.subdirs.values())


def test_killed_pack_and_unpack_leave_nothing_and_run_again(work: Path, tmp_path: Path) -> None:
    parent = work / "parent.zarr"
    reference = tmp_path / "reference.zip"
    pack_store(parent, reference)

    def packed(o: Path) -> bool:
        # A zip at OUT always has a matching checksum and the parent's entries.
        return check_zip_checksum(o) is None and different_entries(o, parent) == []

    out = tmp_path / "out.zip"
    _check(
        ["pack", str(parent), str(out)],
        out,
        lambda: pack_store(parent, out),
        packed,
        _absent,
        seed=6,
    )
    unpacked = tmp_path / "unpacked.zarr"
    _check(
        ["unpack", str(reference), str(unpacked)],
        unpacked,
        lambda: unpack_store(reference, unpacked),
        _same_store(parent),
        _absent,
        seed=7,
    )


def test_a_budget_too_small_for_the_images_is_refused_and_nothing_written(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parent = work / "parent.zarr"
    fixed, _ = _sizes(parent)
    before = sorted(p.name for p in tmp_path.iterdir())
    expected = (
        rf"A budget of {fixed - 1:,} bytes does not fit: the images and metadata take {fixed:,} bytes.*"
        r"Give a budget of at least [0-9,]+ bytes"
    )
    with pytest.raises(ValidationError, match=expected):
        prune(parent, tmp_path / "small.zarr", budget=fixed - 1)
    with pytest.raises(ValidationError, match=expected):
        plan_for_budget(PLAN, fixed - 1, fixed_bytes=fixed, entry_bytes=100.0)
    assert main(["prune", str(parent), str(tmp_path / "small.zarr"), "--budget", str(fixed - 1)]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_budget_prune_stopped_before_its_size_check_leaves_no_store(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each budget attempt is a finished store; it must not sit at OUT before it is known to fit.
    from lpldstore.tools import derive

    parent = work / "parent.zarr"
    fixed, entries = _sizes(parent)
    real = derive._measured_sizes
    calls: list[int] = []

    def stop_after_first_attempt(store: object) -> tuple[int, float]:
        calls.append(1)
        if len(calls) > 1:  # the parent is measured first, then the first attempt
            raise KeyboardInterrupt
        return real(store)  # type: ignore[arg-type]

    monkeypatch.setattr(derive, "_measured_sizes", stop_after_first_attempt)
    with pytest.raises(KeyboardInterrupt):
        prune(parent, tmp_path / "b.zarr", budget=fixed + entries // 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_checksum_left_by_a_killed_pack_does_not_block_packing_again(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "pool.zip"
    checksum_path(out).write_text("0" * 64 + "  pool.zip\n")  # a pack killed between its two renames
    pack_store(work / "parent.zarr", out)
    assert check_zip_checksum(out) is None
