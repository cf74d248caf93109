"""Every bad input to the writer is refused with a clear message, and nothing of it is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lpldstore import (
    AugmentParams,
    DatasetInfo,
    EntryError,
    PruningPlan,
    RelabelConfig,
    StoreExistsError,
    StoreWriter,
    ValidationError,
    open_store,
)
from lpldstore.testing import fake_entry, fake_images, make_store

PLAN = PruningPlan(num_images=20, batch_size=4, epochs=4, ratio=2, strategy="random", seed=5)


def _files(path: Path) -> dict[str, bytes]:
    # The open writer's lease (.leases/, released on close) is not data.
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.relative_to(path).parts[0] != ".leases"
    }


@pytest.fixture
def writer(tmp_path: Path) -> StoreWriter:
    return make_store(tmp_path / "s.zarr", plan=PLAN, num_classes=5, image_hw=(12, 10), output_size=(8, 8))


def _good(writer: StoreWriter, epoch: int, batch: int) -> dict[str, Any]:
    a = writer.attrs
    return fake_entry(a.plan, a.dataset, a.relabel, epoch, batch)


def _bad_cases() -> list[tuple[str, dict[str, Any], str]]:
    """(case, change, message): a change to the entry's arguments or, for keys of AugmentParams,
    to its augmentation record (refused by AugmentParams or by the writer's check of it)."""
    return [
        ("logits shape", {"logits": np.zeros((4, 6))}, r"expected logits of shape \(4, 5\)\. Got \(4, 6\)"),
        (
            "logits dtype",
            {"logits": np.zeros((4, 5), dtype=np.int32)},
            "expected logits of floating-point dtype",
        ),
        ("nan logits", {"logits": np.full((4, 5), np.nan)}, "logits hold values non-finite"),
        ("inf logits", {"logits": np.full((4, 5), np.inf)}, "logits hold values non-finite"),
        ("fp16 overflow", {"logits": np.full((4, 5), 1e6)}, r"beyond the float16 range"),
        ("indices range", {"indices": np.array([0, 1, 2, 99])}, r"expected image indices in \[0, 20\)"),
        (
            "indices composition",
            {"indices": np.array([0, 1, 2, 3])},
            "differ from the plan's batch composition",
        ),
        ("params missing", {"params": None}, "expected params as an AugmentParams"),
        (
            "crop outside",
            {"crops": np.tile([10, 0, 4, 4], (4, 1))},
            r"inside the 12x10 source image\. Got \(10, 0, 4, 4\) for sample 0",
        ),
        ("crop empty", {"crops": np.tile([0, 0, 0, 4], (4, 1))}, "inside the 12x10 source image"),
        ("crop negative", {"crops": np.tile([-1, 0, 2, 2], (4, 1))}, "inside the 12x10 source image"),
        ("crop floats", {"crops": np.zeros((4, 4), dtype=np.float32)}, "Expected integer 'crops'"),
        (
            "flips dtype",
            {"flips": np.zeros(4, dtype=np.int64)},
            r"Expected flips of dtype bool, shape \(4,\)",
        ),
        ("flips shape", {"flips": np.zeros(3, dtype=bool)}, r"Expected flips of dtype bool, shape \(4,\)"),
        (
            "short params",
            {
                "crops": np.tile([0, 0, 2, 2], (3, 1)),
                "flips": np.zeros(3, dtype=bool),
                "mix_index": np.arange(3),
            },
            "expected params for 4 images",
        ),
        ("mix perm", {"mix_index": np.array([0, 0, 1, 2])}, r"'mix_index' to be a permutation of range\(4\)"),
        ("mix lam", {"mix_lam": 1.5}, r"'mix_lam' to be one number in \[0, 1\]"),
        ("mix lam nan", {"mix_lam": float("nan")}, "Expected a finite mix_lam"),
        ("mix box", {"mix_box": (0, 0, 9, 4)}, r"inside the 8x8 output\. Got \(0, 0, 9, 4\)"),
        ("mix box order", {"mix_box": (5, 0, 4, 4)}, "inside the 8x8 output"),
        (
            "cutout in a store without it",
            {"extra": {"cutout_box": np.zeros((4, 4), np.int16), "cutout_fill": np.zeros((4, 3), np.uint8)}},
            r"expected the augmentation arrays .* \(relabel.extras=\[\]\)",
        ),
    ]


_PARAM_FIELDS = {f.name for f in dataclasses.fields(AugmentParams)}


@pytest.mark.parametrize(("case", "change", "match"), _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_entry_is_refused_and_nothing_written(
    writer: StoreWriter, case: str, change: dict[str, Any], match: str
) -> None:
    epoch, batch = writer.todo()[0]
    before = _files(writer.path)
    good = _good(writer, epoch, batch)

    def write() -> None:
        arguments = change
        params = {k: v for k, v in change.items() if k in _PARAM_FIELDS}
        if params:  # built inside the check: AugmentParams refuses some values itself
            arguments = {"params": dataclasses.replace(good["params"], **params)}
        writer.write(epoch, batch, **(good | arguments))

    with pytest.raises(ValidationError, match=match):
        write()
    writer.close()
    assert _files(writer.path) == before
    with open_store(writer.path) as store:
        assert not store.committed().any()


def test_entries_outside_the_plan_or_twice_are_refused(writer: StoreWriter) -> None:
    kept = {tuple(k) for k in PLAN.kept_keys.tolist()}
    pruned = next((e, b) for e in range(4) for b in range(5) if (e, b) not in kept)
    with pytest.raises(EntryError, match="was pruned"):
        writer.write(*pruned, **_good(writer, *pruned))
    with pytest.raises(EntryError, match="outside the plan"):
        writer.write(9, 0, **_good(writer, 0, 0))
    first = writer.todo()[0]
    writer.write(*first, **_good(writer, *first))
    with pytest.raises(EntryError, match="already written"):
        writer.write(*first, **_good(writer, *first))
    writer.close()
    with StoreWriter.open(writer.path) as again, pytest.raises(EntryError, match="already written"):
        again.write(*first, **_good(writer, *first))


def test_a_writer_writes_only_its_own_part(tmp_path: Path) -> None:
    from lpldstore import Layout

    writer = make_store(tmp_path / "s", plan=PLAN, layout=Layout(block_entries=2), part=(1, 2))
    mine = set(writer.todo())
    other = next(tuple(k) for k in PLAN.kept_keys.tolist() if tuple(k) not in mine)
    with pytest.raises(EntryError, match=r"belongs to part 0 of 2, not to this writer's part 1"):
        writer.write(*other, **_good(writer, *other))
    with pytest.raises(ValidationError, match=r"part must be \(rank, world\)"):
        StoreWriter.open(writer.path, part=(2, 2))


def test_create_refuses_bad_images_and_existing_paths(tmp_path: Path) -> None:
    images, labels = fake_images(20, 12, 10, 5)
    dataset = DatasetInfo(name="x", num_classes=5, num_images=20, image_shape=(12, 10, 3))
    relabel = RelabelConfig(output_size=(8, 8))

    def create(path: Path, **change: Any) -> StoreWriter:
        kwargs: dict[str, Any] = {
            "plan": PLAN,
            "images": images,
            "labels": labels,
            "dataset": dataset,
            "relabel": relabel,
        }
        return StoreWriter.create(path, **(kwargs | change))

    target = tmp_path / "new.zarr"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"images": images.astype(np.float32)}, "expected images of integer dtype"),
        ({"images": images[..., :1]}, r"expected images as uint8 of shape \(N, H, W, 3\)"),
        ({"images": images[:10]}, "dataset says 20 images"),
        ({"labels": labels + 5}, r"expected labels in \[0, 5\)"),
        ({"labels": labels[:3]}, r"expected labels of shape \(20,\)"),
        ({"plan": PruningPlan(num_images=21, batch_size=4, epochs=4)}, "the plan is for 21 images"),
        ({"dataset": dataclasses.replace(dataset, images_sha256="0" * 64)}, "not the images"),
    ]
    for change, match in cases:
        with pytest.raises(ValidationError, match=match):
            create(target, **change)
        assert not target.exists()
        assert list(tmp_path.iterdir()) == []  # no staging directory left behind either
    create(target).close()
    with pytest.raises(StoreExistsError, match="already exists"):
        create(target)
