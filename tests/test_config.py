from __future__ import annotations

import json

import pytest

from lpldstore import CodecConfig, ConfigError, DatasetInfo, Layout, Provenance, RelabelConfig


def _records() -> list[object]:
    return [
        DatasetInfo(
            name="imagenet-1k",
            num_classes=3,
            num_images=30,
            image_shape=(224, 224, 3),
            ipc=10,
            class_names=("a", "b", "c"),
        ),
        RelabelConfig(output_size=(224, 224), teacher="resnet18", mix="none", seed=42),
        CodecConfig(),
        Layout(block_entries=8, logits_shard_entries=8),
        Provenance(lpldstore_version="0", created_utc="2026-01-01T00:00:00+00:00", config={"a": [1, 2]}),
    ]


@pytest.mark.parametrize("record", _records(), ids=lambda r: type(r).__name__)
def test_records_round_trip_through_json(record: object) -> None:
    cls = type(record)
    data = json.loads(json.dumps(record.to_dict()))  # type: ignore[attr-defined]
    assert cls.from_dict(data) == record  # type: ignore[attr-defined]


def test_unknown_and_missing_keys_are_named() -> None:
    data = RelabelConfig(output_size=(8, 8)).to_dict()
    with pytest.raises(ConfigError, match=r"Unknown key\(s\) \['outptu_size'\] in relabel"):
        RelabelConfig.from_dict(data | {"outptu_size": [1, 1]})
    del data["output_size"]
    with pytest.raises(ConfigError, match=r"Missing key\(s\) \['output_size'\] in relabel"):
        RelabelConfig.from_dict(data)
    with pytest.raises(ConfigError, match=r"Expected a JSON object for dataset\. Got list instead"):
        DatasetInfo.from_dict([])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DatasetInfo(name="x", num_classes=0, num_images=1, image_shape=(8, 8, 3)), "num_classes"),
        (lambda: DatasetInfo(name="x", num_classes=2, num_images=1, image_shape=(8, 8, 1)), "image_shape"),
        (
            lambda: DatasetInfo(name="x", num_classes=2, num_images=1, image_shape=(40000, 8, 3)),
            "image_shape",
        ),
        (
            lambda: DatasetInfo(name="x", num_classes=2, num_images=1, image_shape=(8, 8, 3), std=(1, 0, 1)),
            "std",
        ),
        (
            lambda: DatasetInfo(
                name="x", num_classes=2, num_images=1, image_shape=(8, 8, 3), class_names=("a",)
            ),
            "class_names",
        ),
        (lambda: RelabelConfig(output_size=(0, 8)), "output_size"),
        (lambda: RelabelConfig(output_size=(8, 8), crop_scale=(0.5, 0.1)), "crop_scale"),
        (lambda: RelabelConfig(output_size=(8, 8), flip_prob=2), "flip_prob"),
        (lambda: RelabelConfig(output_size=(8, 8), mix="mixup"), "mix must be one of"),  # type: ignore[arg-type]
        (lambda: RelabelConfig(output_size=(8, 8), interpolation="lanczos"), "interpolation"),
        (lambda: CodecConfig(name="int4"), "upgrade lpldstore"),
        (lambda: Layout(block_entries=8, logits_shard_entries=4), "one writer owns each shard"),
    ],
)
def test_invalid_values_are_refused(factory: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        factory()  # type: ignore[operator]
