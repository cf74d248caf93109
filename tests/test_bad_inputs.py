"""Bad inputs of the catalogue in docs/reliability.md that other test files do not cover yet.

Each case checks the message and that nothing was written (no file created, changed or removed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lpldstore import (
    CodecConfig,
    ConfigError,
    DatasetInfo,
    FormatError,
    LpldStoreError,
    NotAStoreError,
    PruningPlan,
    RelabelConfig,
    StoreWriter,
    UnsupportedVersionError,
    ValidationError,
    open_store,
    verify_store,
)
from lpldstore.testing import fake_entry, fake_images, fill, make_store

PLAN = PruningPlan(num_images=8, batch_size=4, epochs=2, ratio=1, strategy="prefix")


def _snapshot(root: Path) -> dict[str, bytes]:
    # An open writer's lease (.leases/, released on close) is not data.
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".leases" not in p.relative_to(root).parts
    }


def test_an_unknown_codec_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"name must be one of \('float16', 'quantized', 'quantized_entropy', 'topk'\).*Got 'zfp-lossy'",
    ):
        CodecConfig(name="zfp-lossy")
    images, labels = fake_images(8, 6, 6, 3)
    dataset = DatasetInfo(name="x", num_classes=3, num_images=8, image_shape=(6, 6, 3))
    with pytest.raises(ConfigError, match="name must be one of"):
        StoreWriter.create(
            tmp_path / "s.zarr",
            plan=PLAN,
            images=images,
            labels=labels,
            dataset=dataset,
            relabel=RelabelConfig(output_size=(4, 4)),
            codec=CodecConfig.from_dict({"name": "zfp-lossy", "params": {}}),
        )
    assert list(tmp_path.iterdir()) == []


def test_logits_of_a_teacher_with_another_class_count_are_refused(tmp_path: Path) -> None:
    writer = make_store(tmp_path / "s.zarr", plan=PLAN, num_classes=5)
    before = _snapshot(writer.path)
    entry = fake_entry(writer.attrs.plan, writer.attrs.dataset, writer.attrs.relabel, 0, 0)
    with pytest.raises(ValidationError, match=r"expected logits of shape \(4, 5\)\. Got \(4, 1000\)"):
        writer.write(0, 0, **(entry | {"logits": np.zeros((4, 1000), dtype=np.float32)}))
    writer.close()
    assert _snapshot(writer.path) == before


def _edit_root(path: Path, **attrs: Any) -> None:
    root = json.loads((path / "zarr.json").read_text())
    for key, value in attrs.items():
        section, _, field = key.partition("__")
        if field:
            root["attributes"][section][field] = value
        else:
            root["attributes"][section] = value
    (path / "zarr.json").write_text(json.dumps(root))


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        ({"format_version": 7}, UnsupportedVersionError, "format version 7, newer than this lpldstore reads"),
        ({"format": "zarr-demo"}, NotAStoreError, "is a Zarr group but not an lpldstore store"),
        (
            {"codec__name": "zfp-lossy"},
            FormatError,
            r"root attribute 'codec' is invalid: .*name must be one of",
        ),
        (
            {"dataset__num_classes": 7},
            FormatError,
            # Format version 3 digests the dataset record, so the edit is named before the arrays are compared.
            r"root record\(s\) \['dataset'\] do not match their digests|array 'pool/logits' should have shape",
        ),
        (
            {"dataset__image_shape": [6, 6, 1]},
            FormatError,
            "root attribute 'dataset' is invalid|images/pixels",
        ),
    ],
    ids=["version", "foreign", "codec", "class-count", "image-shape"],
)
def test_bad_store_metadata_is_refused_and_the_store_left_untouched(
    tmp_path: Path, edit: dict[str, Any], error: type[LpldStoreError], match: str
) -> None:
    path = tmp_path / "s.zarr"
    with make_store(path, plan=PLAN, num_classes=3, image_hw=(6, 6), output_size=(4, 4)) as writer:
        fill(writer)
    _edit_root(path, **edit)
    before = _snapshot(tmp_path)
    with pytest.raises(error, match=match):
        open_store(path)
    report = verify_store(path)
    assert not report.ok
    assert report.problems[0].array == "store"
    with pytest.raises(error, match=match):
        StoreWriter.open(path)
    assert _snapshot(tmp_path) == before
