"""Every file and directory name that the pipeline stages write or read, and their JSON records.

A stage's output directory holds its artifacts and one JSON *record* (``{"stage": ..., "config":
..., ...}``) named after the stage. Outputs written before the records had distinct names used
``config.json`` for all three; :func:`read_record` still reads such a file when its ``stage``
field names the stage asked for, so older run directories keep working.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lpld_pipeline.errors import ArtifactError

__all__ = [
    "CHECKPOINT",
    "CLASS_STATS",
    "IMAGEFOLDER",
    "IMAGES",
    "IMAGES_GLOB",
    "METRICS",
    "REPORT",
    "RUN_DIRS",
    "TEACHER",
    "images_shard",
    "read_record",
    "record_name",
    "write_record",
]

# squeeze: class statistics and the teacher (formats in bnstats.py and teacher.py).
CLASS_STATS = "bnstats.pt"
TEACHER = "teacher.pt"
# synthesize: the images (one file, or one per torchrun rank) and a PNG ImageFolder copy.
IMAGES = "images.npz"
IMAGES_GLOB = "images*.npz"
IMAGEFOLDER = "imagefolder"
# train: the resumable checkpoint and one JSON line per epoch and evaluation.
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
# run: where each stage's output goes under the run directory, and the final report.
RUN_DIRS = {"squeeze": "squeeze", "synthesize": "synth", "relabel": "labels.zarr", "train": "train"}
REPORT = "report.json"

_RECORDS = {"squeeze": "squeeze.json", "synthesize": "synthesize.json", "train": "train.json"}
_LEGACY_RECORD = "config.json"


def images_shard(rank: int, world: int) -> str:
    """The images file of torchrun rank ``rank`` of ``world`` (``images.npz`` in one process)."""
    return IMAGES if world == 1 else f"images-rank{rank:03d}-of-{world:03d}.npz"


def record_name(stage: str) -> str:
    """The file name of ``stage``'s JSON record."""
    if stage not in _RECORDS:
        raise ValueError(f"Expected a stage with a record among {sorted(_RECORDS)}. Got {stage!r} instead.")
    return _RECORDS[stage]


def write_record(directory: str | Path, stage: str, record: dict[str, Any]) -> Path:
    """Write ``record`` (given its ``stage`` field here) as ``directory``'s record of ``stage``."""
    path = Path(directory) / record_name(stage)
    path.write_text(json.dumps({"stage": stage, **record}, indent=2) + "\n", encoding="utf-8")
    return path


def read_record(directory: str | Path, stage: str) -> dict[str, Any] | None:
    """``directory``'s record of ``stage``, or None if it has none.

    A ``config.json`` of an older output is read when its ``stage`` field matches; a record that
    is not a JSON object is an :class:`ArtifactError` naming the file.
    """
    directory = Path(directory)
    path = directory / record_name(stage)
    if not path.is_file():
        path = directory / _LEGACY_RECORD
        if not path.is_file():
            return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(
            f"Expected a JSON record of the {stage} stage at {str(path)!r}. Got an unreadable file ({exc}); "
            f"rerun `lpld {stage}` into a fresh directory."
        ) from exc
    if not isinstance(record, dict):
        raise ArtifactError(
            f"Expected a JSON object in {str(path)!r}. Got {type(record).__name__}; rerun `lpld {stage}`."
        )
    if path.name == _LEGACY_RECORD and record.get("stage") != stage:
        return None
    return record
