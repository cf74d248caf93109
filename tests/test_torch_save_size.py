"""torch_save_size against the files torch.save really writes (that it imports no torch: test_architecture)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lpldstore.tools._torch_save_size import torch_save_size

STEMS = ("batch_0", "batch_12345", "batch_1234567")
# Skip sizes whose tensors make the run slow; 1024 x 21843 (a 45 MB file) stays in.
LIMIT = 30_000_000


def _record(n: int, classes: int, mix: bool, empty: bool = False) -> list[object]:
    # The SRe2L/LPLD relabel record, built with torch as the peers build it.
    make = torch.empty if empty else torch.zeros
    coords = make(n, 4, dtype=torch.float32)
    flip = make(n, dtype=torch.bool)
    logits = make(n, classes, dtype=torch.float16)
    if not mix:
        return [coords, flip, None, None, None, logits]
    index = make(n, dtype=torch.int64)
    return [coords, flip, index, 0.5, [np.int64(v) for v in (1, 2, 3, 4)], logits]


GRID = [
    pytest.param(
        n,
        classes,
        marks=[pytest.mark.skip(reason="tensors too large for a quick test")] if n * classes > LIMIT else [],
    )
    for n in (1, 2, 7, 127, 128, 255, 256, 1024, 70000)
    for classes in (1, 10, 100, 1000, 21843)
]


@pytest.mark.parametrize(("n", "classes"), GRID)
def test_equals_the_size_of_a_real_torch_save(tmp_path: Path, n: int, classes: int) -> None:
    for mix in (True, False):
        record = _record(n, classes, mix)
        for stem in STEMS:
            path = tmp_path / f"{stem}.tar"
            torch.save(record, path)
            assert torch_save_size(n, classes, mix, stem) == path.stat().st_size, (n, classes, mix, stem)
            path.unlink()


def test_zip64_records_of_a_file_over_4_gib(tmp_path: Path) -> None:
    """A 5.7 GB file: the logits record itself needs zip64, and the records after it start past 4 GiB.

    skip_data makes torch.save write every header and seek over the storages, so the file has its
    real length but is sparse; the first check shows that length equals a normal save's.
    """
    small = tmp_path / "batch_7.tar"
    skipped = tmp_path / "skipped" / "batch_7.tar"
    skipped.parent.mkdir()
    torch.save(_record(7, 10, True), small)
    with torch.serialization.skip_data():
        torch.save(_record(7, 10, True), skipped)
    assert skipped.stat().st_size == small.stat().st_size

    n, classes = 131072, 21843  # logits 5.7e9 B
    big = tmp_path / "batch_1.tar"
    with torch.serialization.skip_data():
        torch.save(_record(n, classes, True, empty=True), big)  # empty: the memory is never touched
    size = big.stat().st_size
    big.unlink()
    assert size > 2**32
    assert torch_save_size(n, classes, True, "batch_1") == size


def test_a_non_ascii_stem_gets_torch_fallback_folder_name(tmp_path: Path) -> None:
    # torch.save writes non-ASCII paths through Python's open(), and the zip folder is "archive".
    path = tmp_path / "batch_é.tar"
    torch.save(_record(3, 5, True), path)
    assert torch_save_size(3, 5, True, "batch_é") == path.stat().st_size
    assert torch_save_size(3, 5, True, "batch_é") == torch_save_size(3, 5, True, "archive")


@pytest.mark.parametrize(
    ("n", "classes", "stem", "message"),
    [
        (0, 10, "batch_1", "n (images in the batch) must be a positive int"),
        (True, 10, "batch_1", "n (images in the batch) must be a positive int"),
        (4, 0, "batch_1", "num_classes must be a positive int"),
        (4, 10, "", "file_stem must be a bare file name"),
        (4, 10, "epoch_0/batch_1", "file_stem must be a bare file name"),
    ],
)
def test_bad_arguments_are_refused(n: int, classes: int, stem: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        torch_save_size(n, classes, True, stem)
