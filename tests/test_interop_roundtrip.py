"""Interop that cannot lie: export then import loses nothing (the sidecar), layout evidence is
checked, the output size is never a silent default, and bad sidecars or images are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lpldstore import (
    CodecConfig,
    DatasetInfo,
    InteropError,
    Layout,
    PruningPlan,
    RelabelConfig,
    StoreExistsError,
    StoreWriter,
    open_store,
)
from lpldstore.interop import ImportOptions, export_store, import_labels, read_sidecar, sidecar_path
from lpldstore.interop._common import replay_sampler
from lpldstore.testing import different_entries, fake_entry, fake_images

CLASSES = ("n01440764", "n01443537", "n01484850")


def _store(
    path: Path,
    plan: PruningPlan,
    *,
    hw: tuple[int, int] = (12, 12),
    output_size: tuple[int, int] = (8, 8),
    extras: tuple[str, ...] = (),
    class_sorted: bool = True,
) -> Path:
    """A finished store as lpldstore writes it: images class by class, everything recorded."""
    images, labels = fake_images(plan.num_images, *hw, len(CLASSES))
    if class_sorted:
        order = np.argsort(labels, kind="stable")
        images, labels = images[order], labels[order]
    dataset = DatasetInfo(
        name="tiny-distilled",
        num_classes=len(CLASSES),
        num_images=plan.num_images,
        image_shape=(*hw, 3),
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
        ipc=plan.num_images // len(CLASSES),
        class_names=CLASSES,
    )
    relabel = RelabelConfig(
        output_size=output_size,
        teacher="resnet18-tiny",
        teacher_sha256="ab" * 32,
        seed=7,
        mix_alpha=0.8,
        extras=extras,
    )
    with StoreWriter.create(
        path,
        plan=plan,
        images=images,
        labels=labels,
        dataset=dataset,
        relabel=relabel,
        codec=CodecConfig(temperature=4.0),
        layout=Layout(block_entries=4),
    ) as writer:
        for e, b in writer.todo():
            entry = fake_entry(plan, dataset, relabel, e, b)
            entry.pop("indices", None)  # seeded plans: the writer takes the plan's batches
            writer.write(e, b, **entry)
    return path


SRE2L_PLAN = PruningPlan(num_images=12, batch_size=5, epochs=3, seed=42, last_batch="pad", sampler="sre2l")


def _same_records(a: Path, b: Path) -> None:
    with open_store(a) as sa, open_store(b) as sb:
        assert sa.dataset == sb.dataset  # name, mean/std, class names, IPC and the images' SHA-256
        assert sa.relabel == sb.relabel  # teacher and its hash, output size, recipe, replay kernel
        assert sa.plan == sb.plan  # composition and sampler included
        assert sa.codec == sb.codec
        assert sa.layout == sb.layout
    assert different_entries(a, b) == []


@pytest.mark.parametrize(
    ("layout", "plan"),
    [
        ("sre2l", SRE2L_PLAN),
        ("lpld", SRE2L_PLAN),
        ("lpld", PruningPlan(num_images=12, batch_size=4, epochs=4, ratio=2, strategy="prefix", seed=3)),
        (
            "lpld",
            PruningPlan(num_images=12, batch_size=5, epochs=4, ratio=2, strategy="epoch", last_batch="pad"),
        ),
    ],
    ids=["sre2l", "lpld-sre2l-sampler", "lpld-prefix", "lpld-epoch"],
)
def test_export_then_import_loses_nothing(tmp_path: Path, layout: str, plan: PruningPlan) -> None:
    original = _store(tmp_path / "original.zarr", plan)
    report = export_store(layout, original, tmp_path / "labels", images=tmp_path / "images")
    assert report.files == plan.num_kept
    assert Path(report.sidecar) == sidecar_path(tmp_path / "labels")
    # A complete peer artifact: label files, an ImageFolder with the class names, the sidecar beside.
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == list(CLASSES)
    assert not any(p.suffix == ".json" and "lpldstore" in p.name for p in (tmp_path / "labels").iterdir())
    imported = tmp_path / "imported.zarr"
    result = import_labels(layout, tmp_path / "labels", tmp_path / "images", imported, progress=False)
    assert "sidecar" in result.notes
    _same_records(original, imported)
    with open_store(imported) as store:
        parent = store.provenance.parents[0]
        assert parent["name"] == "original.zarr"
        assert parent["operation"] == f"export --to {layout}"
        assert str(tmp_path) not in json.dumps(store.provenance.to_dict())
    # And once more: the imported store exports to the very same files and sidecar records.
    export_store(layout, imported, tmp_path / "again")
    first, second = read_sidecar(tmp_path / "labels"), read_sidecar(tmp_path / "again")
    assert first is not None
    assert second is not None
    assert (first.dataset, first.relabel, first.plan, first.codec) == (
        second.dataset,
        second.relabel,
        second.plan,
        second.codec,
    )
    for f in sorted((tmp_path / "labels").rglob("*.tar")):
        assert f.read_bytes() == (tmp_path / "again" / f.relative_to(tmp_path / "labels")).read_bytes()


def test_sre2l_export_of_an_sre2l_sampler_store_is_what_sre2l_replays(tmp_path: Path) -> None:
    original = _store(tmp_path / "s.zarr", SRE2L_PLAN)
    export_store("sre2l", original, tmp_path / "labels")
    replay = list(replay_sampler(12, 5, 3))
    with open_store(original) as store:
        for e in range(3):
            for b, ids in enumerate(replay[e]):
                assert store.entry(e, b).indices.tolist() == ids
    # The files are SRe2L's 6-item records with its types.
    record = torch.load(tmp_path / "labels" / "epoch_2" / "batch_2.tar", weights_only=False)
    assert [type(x).__name__ for x in record] == ["Tensor", "Tensor", "Tensor", "float", "list", "Tensor"]
    assert record[0].dtype == torch.float32
    assert record[5].dtype == torch.float16
    assert record[5].shape == (2, 3)  # the short last batch: 12 = 5 + 5 + 2
    assert all(type(v).__name__ == "int64" for v in record[4])


def test_sre2l_export_of_another_composition_points_to_lpld(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.zarr", PruningPlan(num_images=12, batch_size=5, epochs=2, last_batch="pad"))
    with pytest.raises(InteropError, match=r"seed-42 sampler draws.*--to lpld.*sampler='sre2l', seed=42"):
        export_store("sre2l", store, tmp_path / "labels")
    random = _store(
        tmp_path / "r.zarr",
        PruningPlan(
            num_images=12,
            batch_size=5,
            epochs=4,
            ratio=2,
            strategy="random",
            last_batch="pad",
            seed=42,
            sampler="sre2l",
        ),
    )
    with pytest.raises(InteropError, match="keeps a random sample"):
        export_store("sre2l", random, tmp_path / "labels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr", "s.zarr"]


def test_export_refuses_what_the_layouts_cannot_hold_and_writes_nothing(tmp_path: Path) -> None:
    plan = SRE2L_PLAN
    unsorted = _store(tmp_path / "u.zarr", plan, class_sorted=False)
    with pytest.raises(InteropError, match="images class by class"):
        export_store("sre2l", unsorted, tmp_path / "labels", images=tmp_path / "images")
    cutout = _store(tmp_path / "c.zarr", plan, extras=("cutout",))
    with pytest.raises(InteropError, match=r"\['cutout'\] augmentation records"):
        export_store("lpld", cutout, tmp_path / "labels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr", "u.zarr"]  # no labels, images, sidecar
    good = _store(tmp_path / "g.zarr", plan)
    (tmp_path / "images").mkdir()
    with pytest.raises(StoreExistsError, match="images already exists"):
        export_store("sre2l", good, tmp_path / "labels", images=tmp_path / "images")
    assert not (tmp_path / "labels").exists()


def test_a_stale_sidecar_of_a_killed_export_is_replaced(tmp_path: Path) -> None:
    store = _store(tmp_path / "s.zarr", SRE2L_PLAN)
    sidecar_path(tmp_path / "labels").write_text("left by a killed export")
    export_store("sre2l", store, tmp_path / "labels")
    assert read_sidecar(tmp_path / "labels") is not None


# -- imports with a sidecar ----------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path, Path]:
    store = _store(tmp_path / "s.zarr", SRE2L_PLAN)
    export_store("sre2l", store, tmp_path / "labels", images=tmp_path / "images")
    return store, tmp_path / "labels", tmp_path / "images"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mean": (0.1, 0.1, 0.1)}, r"--mean to agree with the export sidecar labels.lpldstore.json"),
        ({"output_size": (9, 9)}, r"--output-size to agree .* records \(8, 8\)"),
        ({"teacher": "vit"}, r"--teacher to agree .* records 'resnet18-tiny'"),
    ],
)
def test_flags_that_contradict_the_sidecar_are_refused(
    exported: tuple[Path, Path, Path], tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    _, labels, images = exported
    with pytest.raises(InteropError, match=match):
        import_labels("sre2l", labels, images, tmp_path / "x.zarr", ImportOptions(**options), progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_other_images_or_changed_files_are_refused(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, labels, images = exported
    first = min((images / CLASSES[0]).iterdir())
    pixels = np.asarray(Image.open(first)).copy()
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(first)
    with pytest.raises(InteropError, match="Expected the images the labels were exported with"):
        import_labels("sre2l", labels, images, tmp_path / "x.zarr", progress=False)
    # With --ignore-sidecar the files are plain SRe2L labels again: a PIL kernel, guessed normalization.
    report = import_labels(
        "sre2l",
        labels,
        images,
        tmp_path / "plain.zarr",
        ImportOptions(ignore_sidecar=True, output_size=(8, 8)),
        progress=False,
    )
    assert "normalization" in report.notes
    with open_store(tmp_path / "plain.zarr") as store:
        assert store.relabel.kernel == "torchvision.transforms.functional.resized_crop[PIL]"
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(first)
    shutil.rmtree(labels / "epoch_2")
    with pytest.raises(InteropError, match="the files changed after export"):
        import_labels("sre2l", labels, images, tmp_path / "y.zarr", progress=False)


def test_a_sidecar_of_another_layout_names_the_right_from(
    exported: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, labels, images = exported
    with pytest.raises(InteropError, match=r"exported in the sre2l layout .* Import it with --from sre2l"):
        import_labels("lpld", labels, images, tmp_path / "x.zarr", progress=False)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "expected the JSON of an lpldstore export sidecar"),
        ("[" * 100000 + "]" * 100000, "expected the JSON of an lpldstore export sidecar"),
        (
            '{"format": "something-else"}',
            'expected an lpldstore export sidecar .*"format": "lpldstore-export"',
        ),
        ('{"format": "lpldstore-export", "version": 9}', "version 1, got another one"),
    ],
    ids=["broken", "deep", "foreign", "version"],
)
def test_a_bad_sidecar_is_refused(
    exported: tuple[Path, Path, Path], tmp_path: Path, text: str, match: str
) -> None:
    _, labels, images = exported
    sidecar_path(labels).write_text(text)
    with pytest.raises(InteropError, match=match):
        import_labels("sre2l", labels, images, tmp_path / "x.zarr", progress=False)
    assert not (tmp_path / "x.zarr").exists()


def test_a_sidecar_with_invalid_records_is_refused(exported: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, labels, images = exported
    data = json.loads(sidecar_path(labels).read_text())
    data["records"]["dataset"]["std"] = [0, 0, 0]
    sidecar_path(labels).write_text(json.dumps(data))
    with pytest.raises(InteropError, match=r"valid records: dataset\.std must be three positive numbers"):
        import_labels("sre2l", labels, images, tmp_path / "x.zarr", progress=False)


# -- imports without one: layout evidence, output size ---------------------------------------


def _image_folder(root: Path, hw: tuple[int, int]) -> Path:
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(root / cls / f"img{i}.png")
    return root


def _sre2l_dir(src: Path, hw: tuple[int, int], out: int, items: int = 6) -> Path:
    rng = np.random.default_rng(1)
    for e, batches in enumerate(replay_sampler(12, 5, 2)):
        (src / f"epoch_{e}").mkdir(parents=True)
        for b, ids in enumerate(batches):
            n = len(ids)
            cut = out // 2
            record: list[Any] = [
                torch.FloatTensor([(0.0, 0.0, 1.0, 1.0)] * n),
                torch.tensor([bool(f) for f in rng.random(n) < 0.5]),
                torch.randperm(n),
                0.5,
                [np.int64(0), np.int64(0), np.int64(cut), np.int64(cut)],
                torch.from_numpy(rng.standard_normal((n, 3)).astype(np.float16)),
            ]
            if items == 7:
                record.append(torch.tensor(ids))
            torch.save(record, src / f"epoch_{e}" / f"batch_{b}.tar")
    del hw
    return src


def test_the_output_size_is_taken_from_square_images_and_said(tmp_path: Path) -> None:
    images = _image_folder(tmp_path / "images", (16, 16))
    src = _sre2l_dir(tmp_path / "labels", (16, 16), 16)
    report = import_labels("sre2l", src, images, tmp_path / "s.zarr", progress=False)
    assert report.notes["output_size"].startswith("16x16, taken from the images")
    with open_store(tmp_path / "s.zarr") as store:
        assert store.relabel.output_size == (16, 16)


def test_non_square_images_need_the_output_size(tmp_path: Path) -> None:
    images = _image_folder(tmp_path / "images", (16, 12))
    src = _sre2l_dir(tmp_path / "labels", (16, 12), 8)
    with pytest.raises(InteropError, match=r"are 16x12, not square.*--output-size 224"):
        import_labels("sre2l", src, images, tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_boxes_beyond_an_inferred_size_ask_for_the_output_size(tmp_path: Path) -> None:
    images = _image_folder(tmp_path / "images", (8, 8))
    src = _sre2l_dir(tmp_path / "labels", (8, 8), 32)  # relabelled at 32 px: boxes reach 16
    with pytest.raises(InteropError, match=r"(?s)'mix_box'.*taken from the images; pass --output-size"):
        import_labels("sre2l", src, images, tmp_path / "s.zarr", progress=False)


def _lpld_dir(src: Path) -> Path:
    _sre2l_dir(src, (8, 8), 8)
    (src / "sampler_indices_epoch.json").write_text(
        json.dumps({str(e): [i for b in bs for i in b] for e, bs in enumerate(replay_sampler(12, 5, 2))})
    )
    return src


@pytest.mark.parametrize(
    ("layout", "make", "match"),
    [
        ("sre2l", _lpld_dir, r"looks like a LPLD one: it holds sampler_indices_epoch.json.*--from lpld"),
        ("gvbsm", _lpld_dir, r"--from lpld"),
        ("hald", lambda p: _sre2l_dir(p, (8, 8), 8), r"SRe2L / CDA one.*--from sre2l \(or lpld, gvbsm\)"),
        (
            "sre2l",
            lambda p: _sre2l_dir(p, (8, 8), 8, items=7),
            r"7 items.*G-VBSM's layout\. Import it with --from gvbsm",
        ),
        ("lpld", lambda p: _sre2l_dir(p, (8, 8), 8, items=7), r"--from gvbsm"),
        ("gvbsm", lambda p: _sre2l_dir(p, (8, 8), 8), r"Got 6 items.*--from sre2l"),
    ],
    ids=[
        "lpld-as-sre2l",
        "lpld-as-gvbsm",
        "sre2l-as-hald",
        "gvbsm-as-sre2l",
        "gvbsm-as-lpld",
        "sre2l-as-gvbsm",
    ],
)
def test_another_peers_directory_is_refused_naming_the_right_from(
    tmp_path: Path, layout: str, make: Any, match: str
) -> None:
    images = _image_folder(tmp_path / "images", (8, 8))
    src = make(tmp_path / "labels")
    with pytest.raises(InteropError, match=match):
        import_labels(
            layout, src, images, tmp_path / "s.zarr", ImportOptions(output_size=(8, 8)), progress=False
        )
    assert not (tmp_path / "s.zarr").exists()


def test_more_layout_evidence(tmp_path: Path) -> None:
    from lpldstore.interop import layout_evidence

    (tmp_path / "hald").mkdir()
    (tmp_path / "hald" / "epoch_0.tar").write_bytes(b"")
    (tmp_path / "lpqld").mkdir()
    (tmp_path / "lpqld" / "batch_0.tar").write_bytes(b"")
    (tmp_path / "fkd" / "n01").mkdir(parents=True)
    (tmp_path / "fkd" / "n01" / "img0.tar").write_bytes(b"")
    (tmp_path / "store.zarr").mkdir()
    (tmp_path / "store.zarr" / "zarr.json").write_text("{}")
    found = {name: layout_evidence(tmp_path / name) for name in ("hald", "lpqld", "fkd")}
    assert {k: v.layouts if v else None for k, v in found.items()} == {
        "hald": ("hald",),
        "lpqld": ("lpqld",),
        "fkd": ("fkd",),
    }
    with pytest.raises(InteropError, match="needs no import"):
        layout_evidence(tmp_path / "store.zarr")
    assert layout_evidence(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mean": (0.5, 0.5)}, r"Expected mean to be three finite numbers"),
        ({"std": (0.5, 0.0, 0.5)}, r"Expected std to be three positive numbers"),
        ({"output_size": (0, 8)}, r"Expected output_size"),
        ({"epochs": 0}, r"Expected epochs to be a positive integer"),
        ({"temperature": -1.0}, r"Expected temperature to be a positive number"),
        ({"teacher": ""}, r"Expected a teacher name"),
    ],
)
def test_bad_import_options_are_refused(options: dict[str, Any], match: str) -> None:
    from lpldstore import ConfigError

    with pytest.raises(ConfigError, match=match):
        ImportOptions(**options)


def test_flags_describe_what_a_bare_peer_directory_cannot(tmp_path: Path) -> None:
    images = _image_folder(tmp_path / "images", (8, 8))
    src = _sre2l_dir(tmp_path / "labels", (8, 8), 8)
    options = ImportOptions(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), teacher="rn18-teacher")
    report = import_labels("sre2l", src, images, tmp_path / "s.zarr", options, progress=False)
    assert "normalization" not in report.notes
    with open_store(tmp_path / "s.zarr") as store:
        assert store.dataset.mean == (0.1, 0.2, 0.3)
        assert store.dataset.std == (0.4, 0.5, 0.6)
        assert store.relabel.teacher == "rn18-teacher"
        record = store.provenance.config["import"]
        assert record["source"] == "labels"
        assert record["images"] == "images"
        assert str(tmp_path) not in json.dumps(store.provenance.to_dict())
