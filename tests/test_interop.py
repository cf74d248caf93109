"""Import of each peer layout written exactly as the peer code writes it; export back; unsafe pickles."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lpldstore import open_store
from lpldstore.errors import InteropError, StoreExistsError, UnsafePickleError
from lpldstore.interop import ImportOptions, export_store, import_labels, safe_torch_load
from lpldstore.interop._common import FILL_LOGIT, replay_sampler

H, W, OUT, C = 16, 12, 8, 6
CLASSES = ("n01", "n02", "n03")


def _image_folder(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / cls / f"img{i}.png")
    return root


def _augment(rng: np.random.Generator, n: int) -> tuple[list[tuple[int, int, int, int]], list[bool]]:
    # RandomResizedCrop.get_params-like integer boxes and flips, as the peers draw them per sample.
    boxes = []
    for _ in range(n):
        h, w = int(rng.integers(1, H + 1)), int(rng.integers(1, W + 1))
        boxes.append((int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w))
    return boxes, [bool(f) for f in rng.random(n) < 0.5]


def _coords(boxes: list[tuple[int, int, int, int]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    # SRe2L: torch.FloatTensor((i / H, j / W, h / H, w / W)) per sample, collated.
    return torch.stack([torch.FloatTensor((i / H, j / W, h / H, w / W)) for i, j, h, w in boxes]).to(dtype)


def _rand_bbox(rng: np.random.Generator, lam: float) -> list[Any]:
    # utils_fkd.rand_bbox on a (B, 3, OUT, OUT) batch: NumPy int64 results of np.clip.
    cut = int(OUT * np.sqrt(1.0 - lam))
    cx, cy = rng.integers(OUT), rng.integers(OUT)
    return [
        np.clip(cx - cut // 2, 0, OUT),
        np.clip(cy - cut // 2, 0, OUT),
        np.clip(cx + cut // 2, 0, OUT),
        np.clip(cy + cut // 2, 0, OUT),
    ]


def _sre2l_record(rng: np.random.Generator, n: int, *, mix: bool = True) -> tuple[list[Any], dict[str, Any]]:
    boxes, flips = _augment(rng, n)
    lam = float(rng.beta(1.0, 1.0))
    record = [
        _coords(boxes),
        torch.tensor(flips),
        torch.randperm(n) if mix else None,
        lam if mix else None,
        _rand_bbox(rng, lam) if mix else None,
        torch.from_numpy(rng.standard_normal((n, C)).astype(np.float16)),
    ]
    return record, {"boxes": boxes}


def _check_entry(store: Any, e: int, b: int, ids: list[int], record: list[Any], boxes: Any) -> None:
    entry = store.entry(e, b)
    assert entry.indices.tolist() == list(ids)
    assert entry.crops.tolist() == [list(x) for x in boxes]
    assert entry.flips.tolist() == record[1].tolist()
    if record[2] is None:
        assert entry.mix_index.tolist() == list(range(len(ids)))
    else:
        assert entry.mix_index.tolist() == record[2].tolist()
        assert entry.mix_lam == float(np.float32(record[3]))
        assert entry.mix_box.tolist() == [int(v) for v in record[4]]


def _same_record(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert type(x) is type(y)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype
            assert torch.equal(x, y)
        elif isinstance(x, list):
            assert [type(v) for v in x] == [type(v) for v in y]
            assert x == y
        else:
            assert x == y


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return _image_folder(tmp_path / "images")


def _write_sre2l(src: Path, epochs: int, batch: int, seed: int = 1) -> dict[tuple[int, int], Any]:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    written = {}
    for e, batches in enumerate(replay_sampler(12, batch, epochs)):
        (src / f"epoch_{e}").mkdir(parents=True)
        for b, ids in enumerate(batches):
            record, extra = _sre2l_record(rng, len(ids))
            torch.save(record, src / f"epoch_{e}" / f"batch_{b}.tar")
            written[e, b] = (ids, record, extra["boxes"])
    return written


def test_sre2l_import_every_entry_and_export_gives_back_the_files(tmp_path: Path, images: Path) -> None:
    src = tmp_path / "FKD_cutmix_fp16"
    written = _write_sre2l(src, epochs=3, batch=5)  # 12 images: batches of 5, 5, 2
    report = import_labels(
        "sre2l", src, images, tmp_path / "s.zarr", ImportOptions(output_size=(OUT, OUT)), progress=False
    )
    assert report.entries == 9
    with open_store(tmp_path / "s.zarr") as store:
        assert store.plan.last_batch == "pad"
        assert store.relabel.mix == "cutmix"
        for (e, b), (ids, record, boxes) in written.items():
            _check_entry(store, e, b, ids, record, boxes)
            assert np.array_equal(store.entry(e, b).logits, record[5].numpy())
    export_store("sre2l", tmp_path / "s.zarr", tmp_path / "back")
    for (e, b), (_, record, _) in written.items():
        _same_record(safe_torch_load(tmp_path / "back" / f"epoch_{e}" / f"batch_{b}.tar"), record)
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == ["epoch_0", "epoch_1", "epoch_2"]


@pytest.mark.parametrize("pruned", [False, True])
def test_lpld_import_every_entry_and_export_gives_back_the_files(
    tmp_path: Path, images: Path, pruned: bool
) -> None:
    rng = np.random.default_rng(2)
    src, batch, epochs = tmp_path / "FKD_cutmix_fp16_LPLD", 5, 4
    per_epoch = 12 // batch if pruned else math.ceil(12 / batch)  # pruned runs drop the short batch
    kept = int(epochs * per_epoch * (1 - 0.6)) if pruned else epochs * per_epoch
    sidecar: dict[str, list[int]] = {}
    written = {}
    for g in range(kept):
        e, b = divmod(g, per_epoch)
        if b == 0:
            perm = rng.permutation(12).tolist()
        ids = perm[b * batch : (b + 1) * batch]
        record, extra = _sre2l_record(rng, len(ids))
        (src / f"epoch_{e}").mkdir(parents=True, exist_ok=True)
        torch.save(record, src / f"epoch_{e}" / f"batch_{b}.tar")
        sidecar.setdefault(str(e), []).extend(ids)
        written[e, b] = (ids, record, extra["boxes"])
    (src / "sampler_indices_epoch.json").write_text(json.dumps(sidecar))
    options = ImportOptions(output_size=(OUT, OUT), epochs=epochs)
    import_labels("lpld", src, images, tmp_path / "l.zarr", options, progress=False)
    with open_store(tmp_path / "l.zarr") as store:
        assert store.num_entries == kept
        assert store.plan.epochs == epochs
        assert store.plan.last_batch == ("drop" if pruned else "pad")
        for (e, b), (ids, record, boxes) in written.items():
            _check_entry(store, e, b, ids, record, boxes)
            assert np.array_equal(store.entry(e, b).logits, record[5].numpy())
    export_store("lpld", tmp_path / "l.zarr", tmp_path / "back")
    for (e, b), (_, record, _) in written.items():
        _same_record(safe_torch_load(tmp_path / "back" / f"epoch_{e}" / f"batch_{b}.tar"), record)
    assert json.loads((tmp_path / "back" / "sampler_indices_epoch.json").read_text()) == sidecar


def test_gvbsm_import_reads_the_ids_of_each_record(tmp_path: Path, images: Path) -> None:
    rng = np.random.default_rng(3)
    src = tmp_path / "gvbsm"
    written = {}
    for e in range(2):
        (src / f"epoch_{e}").mkdir(parents=True)
        perm = rng.permutation(12).tolist()
        for b in range(3):
            ids = perm[b * 5 : (b + 1) * 5]
            record, extra = _sre2l_record(rng, len(ids))
            torch.save([*record, torch.tensor(ids)], src / f"epoch_{e}" / f"batch_{b}.tar")
            written[e, b] = (ids, record, extra["boxes"])
    import_labels(
        "gvbsm", src, images, tmp_path / "g.zarr", ImportOptions(output_size=(OUT, OUT)), progress=False
    )
    with open_store(tmp_path / "g.zarr") as store:
        for (e, b), (ids, record, boxes) in written.items():
            _check_entry(store, e, b, ids, record, boxes)
            assert np.array_equal(store.entry(e, b).logits, record[5].numpy())


@pytest.mark.parametrize("topk", [None, 3])
def test_lpqld_import_full_and_topk_records(tmp_path: Path, images: Path, topk: int | None) -> None:
    rng = np.random.default_rng(4)
    src = tmp_path / "lpqld"
    src.mkdir()
    sidecar, written = {}, {}
    for g in range(5):  # 2 batches of 6 per epoch; pruned prefix of 5
        e, b = divmod(g, 2)
        if b == 0:
            perm = rng.permutation(12).tolist()
        ids = perm[b * 6 : (b + 1) * 6]
        boxes, flips = _augment(rng, 6)
        lam = float(rng.beta(1.0, 1.0))
        logits = rng.standard_normal((6, C)).astype(np.float16)
        record: list[Any] = [
            _coords(boxes, torch.float16),
            torch.tensor(flips),
            torch.randperm(6).to(torch.uint8),
            lam,
            [torch.tensor(int(v), dtype=torch.uint8) for v in _rand_bbox(rng, lam)],
        ]
        if topk is None:
            record.append(torch.from_numpy(logits))
        else:
            values, top_ids = torch.from_numpy(logits).float().topk(topk, dim=1)
            record += [values.half(), top_ids.short()]
        torch.save(record, src / f"batch_{g}.tar")
        sidecar[str(g)] = ids
        written[e, b] = (ids, record, boxes, logits)
    (src / "sampler_indices_batch.json").write_text(json.dumps(sidecar))
    options = ImportOptions(output_size=(OUT, OUT), num_classes=C)
    import_labels("lpqld", src, images, tmp_path / "q.zarr", options, progress=False)
    with open_store(tmp_path / "q.zarr") as store:
        for (e, b), (ids, record, boxes, logits) in written.items():
            _check_entry(store, e, b, ids, record, boxes)
            got = store.entry(e, b).logits.astype(np.float32)
            if topk is None:
                assert np.array_equal(got, logits.astype(np.float32))
            else:
                top = np.argsort(-logits.astype(np.float32), axis=1)[:, :topk]
                rows = np.arange(6)[:, None]
                assert np.array_equal(got[rows, top], logits[rows, top].astype(np.float32))
                mask = np.ones_like(got, dtype=bool)
                mask[rows, top] = False
                assert (got[mask] == FILL_LOGIT).all()
                # MR-k: softmax over the k stored logits, zeros elsewhere, at the training temperature.
                p = torch.softmax(torch.from_numpy(got) / 20, dim=1).numpy()
                assert np.allclose(p[rows, top].sum(axis=1), 1.0)
                assert (p[mask] == 0).all()


def test_hald_import_probabilities_become_tempered_logits(tmp_path: Path, images: Path) -> None:
    rng = np.random.default_rng(5)
    src = tmp_path / "hald_bs5_slc36_ipc4"
    src.mkdir()
    perms = {str(e): torch.randperm(12, generator=torch.Generator().manual_seed(42 + e)) for e in range(3)}
    torch.save(perms, src / "sampler_indices_dict.pt")
    written = {}
    for e in range(3):
        records = []
        for b in range(3):
            ids = perms[str(e)][b * 5 : (b + 1) * 5].tolist()
            record, extra = _sre2l_record(rng, len(ids))
            record[0] = record[0].half()
            record[5] = torch.softmax(
                torch.from_numpy(rng.standard_normal((len(ids), C)) * 30) / 20, dim=1
            ).half()
            records.append(record)
            written[e, b] = (ids, record, extra["boxes"])
        torch.save(records, src / f"epoch_{e}.tar")
    import_labels(
        "hald", src, images, tmp_path / "h.zarr", ImportOptions(output_size=(OUT, OUT)), progress=False
    )
    with open_store(tmp_path / "h.zarr") as store:
        for (e, b), (ids, record, boxes) in written.items():
            _check_entry(store, e, b, ids, record, boxes)
            p = torch.softmax(torch.from_numpy(store.entry(e, b).logits.astype(np.float32)) / 20, dim=1)
            assert torch.allclose(p, record[5].float(), atol=2e-3)


def test_fkd_import_per_image_files(tmp_path: Path, images: Path) -> None:
    rng = np.random.default_rng(6)
    src, crops, k = tmp_path / "FKD_soft_label" / "train", 3, 2
    written = {}
    for cls in CLASSES:
        (src / cls).mkdir(parents=True)
        for i in range(4):
            boxes, flips = _augment(rng, crops)
            coords = np.asarray([(a / H, b / W, c / H, d / W) for a, b, c, d in boxes], dtype=np.float32)
            ids = np.stack([rng.choice(C, size=k, replace=False) for _ in range(crops)]).astype(np.float32)
            probs = rng.dirichlet(np.ones(k + 1), size=crops)[:, :k].astype(np.float32)
            labels = np.stack([ids, probs], axis=1)
            torch.save([coords, np.asarray(flips), labels], src / cls / f"img{i}.tar")
            written[cls, i] = (boxes, flips, ids, probs)
    options = ImportOptions(output_size=(OUT, OUT), num_classes=C, batch_size=5)
    import_labels("fkd", src, images, tmp_path / "f.zarr", options, progress=False)
    with open_store(tmp_path / "f.zarr") as store:
        assert store.plan.epochs == crops
        assert store.relabel.mix == "none"
        for e in range(crops):
            for b in range(3):
                entry = store.entry(e, b)
                for slot, image in enumerate(entry.indices.tolist()):
                    boxes, flips, ids, probs = written[CLASSES[image // 4], image % 4]
                    assert entry.crops[slot].tolist() == list(boxes[e])
                    assert bool(entry.flips[slot]) == flips[e]
                    # marginal smoothing: top-k probabilities in place, the rest shared equally.
                    target = np.full(C, (1 - probs[e].sum()) / (C - k))
                    target[ids[e].astype(int)] = probs[e]
                    p = torch.softmax(torch.from_numpy(entry.logits[slot].astype(np.float32)), dim=0).numpy()
                    assert np.allclose(p, target, atol=2e-3)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path: Path, images: Path) -> None:
    src = tmp_path / "labels"
    _write_sre2l(src, epochs=1, batch=5)
    marker = tmp_path / "pwned"
    torch.save([_Evil(marker)], src / "epoch_0" / "batch_1.tar")
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match=r"refused to unpickle.*Nothing from it was run"):
        import_labels(
            "sre2l", src, images, tmp_path / "out.zarr", ImportOptions(output_size=(OUT, OUT)), progress=False
        )
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels"]  # no store, no staging


def test_problems_are_all_reported_and_nothing_is_written(tmp_path: Path, images: Path) -> None:
    src = tmp_path / "labels"
    _write_sre2l(src, epochs=2, batch=5)
    (src / "epoch_0" / "batch_1.tar").unlink()  # a missing batch file
    with pytest.raises(InteropError, match=r"missing batch file for epoch 0 batch 1"):
        import_labels(
            "sre2l", src, images, tmp_path / "out.zarr", ImportOptions(output_size=(OUT, OUT)), progress=False
        )
    _write_sre2l(tmp_path / "again", epochs=1, batch=5)
    torch.save(["not", "a", "record"], tmp_path / "again" / "epoch_0" / "batch_2.tar")  # an unknown item
    record = safe_torch_load(tmp_path / "again" / "epoch_0" / "batch_1.tar")
    torch.save(
        [r[:3] if isinstance(r, torch.Tensor) else r for r in record],
        tmp_path / "again" / "epoch_0" / "batch_1.tar",
    )
    with pytest.raises(
        InteropError, match=r"2 problem\(s\), nothing written(.|\n)*short batch(.|\n)*unknown record layout"
    ):
        import_labels(
            "sre2l",
            tmp_path / "again",
            images,
            tmp_path / "out.zarr",
            ImportOptions(output_size=(OUT, OUT)),
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "images", "labels"]
    with pytest.raises(StoreExistsError, match="already exists"):
        import_labels("sre2l", src, images, tmp_path / "images", progress=False)


def test_cli_import_and_export(tmp_path: Path, images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lpldstore.cli import main

    src = tmp_path / "labels"
    written = _write_sre2l(src, epochs=1, batch=5)
    args = ["import", "--from", "sre2l", str(src), "--images", str(images), str(tmp_path / "s.zarr")]
    assert main([*args, "--output-size", str(OUT), "--quiet"]) == 0
    assert "imported 3 entries from sre2l layout" in capsys.readouterr().out
    assert main(args) == 2  # the store exists now
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--to", "lpld", str(tmp_path / "s.zarr"), str(tmp_path / "back")]) == 0
    sidecar = json.loads((tmp_path / "back" / "sampler_indices_epoch.json").read_text())
    assert sidecar == {"0": [i for b in range(3) for i in written[0, b][0]]}
