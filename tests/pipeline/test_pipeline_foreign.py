"""Relabel from anything: a JPEG ImageFolder, a plain torchvision state dict or a TorchScript file.

And what has to hold around it: `lpld verify --teacher` accepts the same teacher forms, every bad
input is one line and exit 2 with nothing written, the store's provenance holds no local path,
and a `--sampler sre2l` store exports to SRe2L exactly.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import lpldstore
from lpld_pipeline.check import check_against_teacher
from lpld_pipeline.cli import main
from lpld_pipeline.imagefolder import read_image_folder
from lpld_pipeline.teacher import NORMALIZATIONS, load_teacher
from lpldstore.interop import export_store, import_labels, load_image_folder
from lpldstore.testing import different_entries

from ._stores import CountingTeacher, one_thread, stage_dirs, tiny_images, tiny_teacher  # noqa: F401  (one_thread: autouse)

CLASSES = ("cat", "dog", "fox")  # sorted: the labels are 0, 1, 2
PER_CLASS = 4
SIZE = 16
# A small plan: 12 images in batches of 5 (a short last batch), 3 epochs, half of the entries kept.
PLAN = ["--set", "batch_size=5", "--set", "epochs=3", "--set", "ratio=2", "--set", "crop_scale=[0.5,1.0]"]


def _jpeg_folder(root: Path, size: tuple[int, int] = (SIZE, SIZE), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"img_{i}.jpg", quality=90)
    return root


def _resnet18(num_classes: int, seed: int = 0) -> torch.nn.Module:
    from torchvision.models import resnet18

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return resnet18(num_classes=num_classes).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An ImageFolder of JPEGs, resnet18 as a plain state dict and as TorchScript, a 5-class state dict."""
    root = tmp_path_factory.mktemp("foreign")
    folder = _jpeg_folder(root / "released")
    model = _resnet18(len(CLASSES))
    torch.save(model.state_dict(), root / "r18.pth")
    with warnings.catch_warnings():  # TorchScript is deprecated in recent torch; its files are still about
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, SIZE, SIZE)), str(root / "r18.ts"))
    torch.save(_resnet18(5).state_dict(), root / "r18_5classes.pth")
    return {
        "root": root,
        "folder": folder,
        "state_dict": root / "r18.pth",
        "torchscript": root / "r18.ts",
        "other": root / "r18_5classes.pth",
    }


def test_the_image_folder_reader_follows_imagefolder_order(files: dict[str, Path]) -> None:
    ours = read_image_folder(files["folder"])
    theirs = load_image_folder(files["folder"])  # torchvision's ImageFolder, as the importers read it
    assert ours.class_names == theirs.classes == CLASSES
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    np.testing.assert_array_equal(ours.images, theirs.pixels)
    np.testing.assert_array_equal(ours.indices, np.tile(np.arange(PER_CLASS), len(CLASSES)))


def test_image_size_resizes_and_centre_crops_as_torchvision_does(tmp_path: Path) -> None:
    from torchvision import transforms

    folder = tmp_path / "mixed"
    (folder / "a").mkdir(parents=True)
    rng = np.random.default_rng(3)
    shapes = [(20, 31), (40, 17), (12, 12)]
    for i, shape in enumerate(shapes):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(folder / "a" / f"{i}.png")
    got = read_image_folder(folder, image_size=SIZE)
    assert got.images.shape == (3, SIZE, SIZE, 3)
    reference = transforms.Compose([transforms.Resize(SIZE), transforms.CenterCrop(SIZE)])
    for i in range(len(shapes)):
        with Image.open(folder / "a" / f"{i}.png") as image:
            expected = np.asarray(reference(image.convert("RGB")))
        np.testing.assert_array_equal(got.images[i], expected)


@pytest.mark.parametrize("form", ["state_dict", "torchscript"])
def test_relabel_of_a_jpeg_imagefolder_with_a_torchvision_teacher_passes_verify(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    store = tmp_path / "labels.zarr"
    arch = ["--teacher-arch", "resnet18"] if form == "state_dict" else []
    argv = ["relabel", "--image-folder", str(files["folder"]), "--teacher", str(files[form]), *arch]
    assert main([*argv, "--out", str(store), "--device", "cpu", "--quiet", *PLAN]) == 0
    with lpldstore.open_store(store) as s:
        assert s.dataset.class_names == CLASSES
        assert s.dataset.name == "released"
        assert (s.dataset.mean, s.dataset.std) == NORMALIZATIONS["imagenet"]  # the default normalization
        assert s.relabel.teacher == ("resnet18" if form == "state_dict" else "torchscript")
        assert s.plan.num_images == len(CLASSES) * PER_CLASS
        assert s.committed().all()
        np.testing.assert_array_equal(s.images(), read_image_folder(files["folder"]).images)
    capsys.readouterr()
    assert main(["verify", str(store), "--teacher", str(files[form]), *arch]) == 0
    assert "teacher check: OK" in capsys.readouterr().out
    report = check_against_teacher(store, files[form], arch="resnet18" if form == "state_dict" else "")
    assert report.ok
    assert report.problems == ()
    # Another teacher's weights are caught: by hash, and by the logits.
    other = tmp_path / "other.pth"
    torch.save(_resnet18(len(CLASSES), seed=1).state_dict(), other)
    mismatch = check_against_teacher(store, other, arch="resnet18")
    assert not mismatch.ok
    assert "weights hash to" in mismatch.problems[0]


def test_the_stated_normalization_is_recorded_and_used(files: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "labels.zarr"
    mean, std = ["0.5", "0.5", "0.5"], ["0.25", "0.25", "0.25"]
    argv = ["relabel", "--image-folder", str(files["folder"]), "--teacher", str(files["state_dict"])]
    argv += ["--teacher-arch", "resnet18", "--mean", *mean, "--std", *std]
    assert main([*argv, "--out", str(store), "--device", "cpu", "--quiet", *PLAN]) == 0
    with lpldstore.open_store(store) as s:
        assert (s.dataset.mean, s.dataset.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    # verify takes the store's normalization by default; ImageNet's would give other logits.
    assert check_against_teacher(store, files["state_dict"], arch="resnet18").ok
    imagenet = check_against_teacher(
        store,
        files["state_dict"],
        arch="resnet18",
        mean=NORMALIZATIONS["imagenet"][0],
        std=NORMALIZATIONS["imagenet"][1],
    )
    assert not imagenet.ok


def test_provenance_holds_no_local_path(files: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "labels.zarr"
    argv = ["relabel", "--image-folder", str(files["folder"]), "--teacher", str(files["state_dict"])]
    assert (
        main([*argv, "--teacher-arch", "resnet18", "--out", str(store), "--device", "cpu", "--quiet", *PLAN])
        == 0
    )
    with lpldstore.open_store(store) as s:
        provenance = s.provenance.to_dict()
        attributes = json.dumps(s.attrs.to_json())
    for text in (json.dumps(provenance), attributes):
        assert str(tmp_path) not in text
        assert str(files["root"]) not in text
    # Nothing in any file of the store either (its metadata documents and chunks).
    for path in store.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert str(tmp_path).encode() not in data, path
            assert str(files["root"]).encode() not in data, path
    record = provenance["config"]  # the relabel stage's record: its settings and its teacher
    assert record["stage"] == "relabel"
    settings = record["config"]
    assert (settings["image_folder"], settings["teacher"], settings["out"]) == (
        "released",
        "r18.pth",
        "labels.zarr",
    )
    assert settings["teacher_arch"] == "resnet18"
    teacher = load_teacher(files["state_dict"], num_classes=len(CLASSES), arch="resnet18")
    assert record["teacher"] == {
        "arch": "resnet18",
        "file": "r18.pth",
        "sha256": teacher.sha256(),
        "mean": list(NORMALIZATIONS["imagenet"][0]),
        "std": list(NORMALIZATIONS["imagenet"][1]),
    }
    assert s.relabel.teacher_sha256 == teacher.sha256()


def test_the_pipeline_stages_provenance_names_its_directories_only(tmp_path: Path) -> None:
    squeeze_dir, synth_dir = stage_dirs(tmp_path / "dirs", tiny_teacher(), tiny_images())
    store = tmp_path / "labels.zarr"
    argv = ["relabel", "--squeeze-dir", str(squeeze_dir), "--synth-dir", str(synth_dir)]
    assert main([*argv, "--out", str(store), "--device", "cpu", "--quiet", *PLAN]) == 0
    for path in store.rglob("*"):
        if path.is_file():
            assert str(tmp_path).encode() not in path.read_bytes(), path
    with lpldstore.open_store(store) as s:
        config = s.provenance.to_dict()["config"]["config"]
    assert (config["squeeze_dir"], config["synth_dir"]) == ("squeeze", "synth")


def _one_line(capsys: pytest.CaptureFixture[str], status: int) -> str:
    captured = capsys.readouterr()
    assert status == 2
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


RELABEL_CASES = [
    ("missing teacher", "Expected a teacher file at"),
    (
        "no arch",
        "Expected the model name of the plain state dict 'r18.pth' (e.g. --teacher-arch resnet18",
    ),
    ("unknown arch", "Expected teacher.arch 'tiny_resnet', a torchvision classification model"),
    (
        "timm missing",
        "teacher 'timm:resnet18' is a timm model, and timm is not installed: pip install timm",
    ),
    (
        "wrong classes",
        "Expected 'r18_5classes.pth' to be a state dict of resnet18 with 3 classes. Its keys",
    ),
    ("wrong model", "Expected 'r18.pth' to be a state dict of mobilenet_v2 with 3 classes. Its keys"),
    (
        "non-image file",
        "Expected only JPEG or PNG images (.jpg, .jpeg, .png) in the class folders. Got 'dog/notes.txt'",
    ),
    ("empty class", "Expected at least one image in every class folder. Got none in 'emu'"),
    ("two sizes", "Expected images of one size (or image_size > 0 to resize them)."),
    ("bad std", "Expected std values > 0. Got (0.2, 0.0, 0.2) instead."),
    ("no folder", "Expected an image folder (class folders of JPEG/PNG images) at"),
    ("undecodable", "Expected a readable JPEG or PNG image. Got 'cat/broken.jpg'"),
]


@pytest.mark.parametrize(("case", "message"), RELABEL_CASES)
def test_a_bad_input_is_one_line_and_writes_nothing(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    monkeypatch.delenv("LPLD_DEBUG", raising=False)
    folder, teacher, arch = files["folder"], files["state_dict"], ["--teacher-arch", "resnet18"]
    extra: list[str] = []
    if case == "missing teacher":
        teacher = tmp_path / "nope.pth"
    elif case == "no arch":
        arch = []
    elif case == "unknown arch":
        arch = ["--teacher-arch", "resnet19"]
    elif case == "timm missing":
        monkeypatch.setitem(__import__("sys").modules, "timm", None)
        arch = ["--teacher-arch", "timm:resnet18"]
    elif case == "wrong classes":
        teacher = files["other"]
    elif case == "wrong model":
        arch = ["--teacher-arch", "mobilenet_v2"]
    elif case in ("non-image file", "empty class", "two sizes", "undecodable"):
        folder = _jpeg_folder(tmp_path / "set")
        if case == "non-image file":
            (folder / "dog" / "notes.txt").write_text("not an image")
        elif case == "empty class":
            (folder / "emu").mkdir()
        elif case == "undecodable":
            (folder / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
        else:
            Image.fromarray(np.zeros((SIZE, SIZE + 2, 3), np.uint8)).save(folder / "fox" / "wide.png")
    elif case == "bad std":
        extra = ["--std", "0.2", "0", "0.2"]
    elif case == "no folder":
        folder = tmp_path / "missing"
    store = tmp_path / "labels.zarr"
    argv = ["relabel", "--image-folder", str(folder), "--teacher", str(teacher), *arch, *extra]
    line = _one_line(capsys, main([*argv, "--out", str(store), "--device", "cpu", "--quiet", *PLAN]))
    assert line.startswith("lpld relabel: error: ")
    assert message in line
    assert not store.exists()


@pytest.fixture(scope="module")
def good_store(files: dict[str, Path]) -> Path:
    store = files["root"] / "good.zarr"
    argv = ["relabel", "--image-folder", str(files["folder"]), "--teacher", str(files["state_dict"])]
    assert (
        main([*argv, "--teacher-arch", "resnet18", "--out", str(store), "--device", "cpu", "--quiet", *PLAN])
        == 0
    )
    return store


VERIFY_CASES = [
    ("verify missing", "Expected a teacher file at"),
    (
        "verify wrong state dict",
        "Expected 'r18_5classes.pth' to be a state dict of resnet18 with 3 classes",
    ),
    ("verify no arch", "Expected the model name of the plain state dict 'r18.pth'"),
    ("verify torchscript with arch", "Expected no teacher arch for the TorchScript file 'r18.ts'"),
]


@pytest.mark.parametrize(("case", "message"), VERIFY_CASES)
def test_verify_teacher_bad_inputs_are_one_line(
    files: dict[str, Path],
    good_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    monkeypatch.delenv("LPLD_DEBUG", raising=False)
    teacher, arch = files["state_dict"], ["--teacher-arch", "resnet18"]
    if case == "verify missing":
        teacher = tmp_path / "gone.pth"
    elif case == "verify wrong state dict":
        teacher = files["other"]
    elif case == "verify no arch":
        arch = []
    else:
        teacher = files["torchscript"]
    line = _one_line(capsys, main(["verify", str(good_store), "--teacher", str(teacher), *arch]))
    assert line.startswith("lpld verify: error: ")
    assert message in line


def test_a_sre2l_sampler_store_exports_to_sre2l_and_back(tmp_path: Path) -> None:
    squeeze_dir, synth_dir = stage_dirs(tmp_path / "dirs", tiny_teacher(), tiny_images())
    store = tmp_path / "labels.zarr"
    argv = ["relabel", "--squeeze-dir", str(squeeze_dir), "--synth-dir", str(synth_dir), "--sampler", "sre2l"]
    # 20 images in batches of 6: a short last batch, which SRe2L keeps (drop_last=False).
    plan = ["--set", "batch_size=6", "--set", "epochs=3", "--set", "ratio=1", "--set", "crop_scale=[0.5,1.0]"]
    assert main([*argv, "--out", str(store), "--device", "cpu", "--quiet", *plan]) == 0
    with lpldstore.open_store(store) as s:
        assert (s.plan.sampler, s.plan.seed, s.plan.last_batch) == ("sre2l", 42, "pad")
    report = export_store("sre2l", store, tmp_path / "labels", images=tmp_path / "images")
    assert report.files == 3 * 4
    back = tmp_path / "back.zarr"
    import_labels("sre2l", tmp_path / "labels", tmp_path / "images", back, progress=False)
    assert different_entries(store, back) == []
    with lpldstore.open_store(store) as a, lpldstore.open_store(back) as b:
        assert (a.plan, a.relabel, a.dataset) == (b.plan, b.relabel, b.dataset)
    # The default sampler's store is refused by the same export, with the way out named.
    other = tmp_path / "default.zarr"
    argv = ["relabel", "--squeeze-dir", str(squeeze_dir), "--synth-dir", str(synth_dir)]
    assert (
        main([*argv, "--out", str(other), "--device", "cpu", "--quiet", *plan, "--set", "last_batch=pad"])
        == 0
    )
    with pytest.raises(lpldstore.InteropError, match="sampler='sre2l', seed=42"):
        export_store("sre2l", other, tmp_path / "labels2")


def test_a_rerun_of_a_complete_relabel_says_so(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "labels.zarr"
    argv = ["relabel", "--image-folder", str(files["folder"]), "--teacher", str(files["torchscript"])]
    argv += ["--out", str(store), "--device", "cpu", "--quiet", *PLAN]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "relabel: labels.zarr is complete; nothing to compute" in captured.err
    assert "computed 0 entries" in captured.out


def test_the_catalogue_lists_every_case() -> None:
    """docs/pipeline.md's bad-input table has one row per case above, and no other."""
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "pipeline.md").read_text()
    table = text.split("## Bad-input catalogue", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z -]+)` \|", table, flags=re.MULTILINE))
    cases = {case for case, _ in RELABEL_CASES + VERIFY_CASES}
    assert listed == cases


def test_a_rerun_of_a_crashed_relabel_says_where_it_resumes(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stage = importlib.import_module("lpld_pipeline.relabel")
    real = stage.relabel_entries

    def crashing(writer: Any, teacher: Any, images: Any, **kw: Any) -> int:
        return int(real(writer, CountingTeacher(teacher, fail_on=3), images, **kw))

    store = tmp_path / "labels.zarr"
    argv = ["relabel", "--image-folder", str(files["folder"]), "--teacher", str(files["torchscript"])]
    argv += ["--out", str(store), "--device", "cpu", "--quiet", *PLAN]
    monkeypatch.setattr(stage, "relabel_entries", crashing)
    monkeypatch.setenv("LPLD_DEBUG", "")
    assert main(argv) == 2  # the simulated crash, after two entries
    monkeypatch.setattr(stage, "relabel_entries", real)
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "relabel: resuming labels.zarr at entry 2 of 3" in captured.err
    assert "computed 1 entries" in captured.out
