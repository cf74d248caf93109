"""The export sidecar: what a peer layout cannot hold, so that export then import loses nothing.

``lpldstore export --to X STORE OUT`` writes ``OUT.lpldstore.json`` beside the label directory (not
inside: SRe2L's reader counts every entry of the directory as an epoch). It holds the store's
root records (dataset with mean/std, class names and the images' SHA-256; relabel with the
teacher, its weight hash, the output size, crop ranges and the replay kernel; the plan with its
composition; the codec; the layout), the layout name and where the images went. ``lpldstore
import --from X OUT`` reads it back: the new store gets these records instead of the guesses a
bare peer directory allows, after checking that the files and images are the ones exported.

Nothing here imports torch; the file is untrusted input (size-capped, every record validated).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from lpldstore.errors import ConfigError, InteropError
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import CodecConfig, DatasetInfo, Layout, RelabelConfig

__all__ = ["FORMAT", "MAX_BYTES", "SUFFIX", "ExportRecord", "read_sidecar", "sidecar_path", "sidecar_text"]

FORMAT = "lpldstore-export"
VERSION = 1
SUFFIX = ".lpldstore.json"
# Class names of ImageNet-21K run to a few hundred KB; anything near this cap is not a sidecar.
MAX_BYTES = 16 << 20


def sidecar_path(label_dir: str | os.PathLike[str]) -> Path:
    """``<label_dir>.lpldstore.json``: the sidecar of an exported label directory."""
    path = Path(label_dir)
    return path.with_name(path.name + SUFFIX)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportRecord:
    """Everything an import needs to rebuild the exported store's records."""

    layout: str
    entries: int
    dataset: DatasetInfo
    relabel: RelabelConfig
    plan: PruningPlan
    codec: CodecConfig
    store_layout: Layout
    source: dict[str, Any]
    images: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "layout": self.layout,
            "entries": self.entries,
            "source": self.source,
            "images": self.images,
            "records": {
                "dataset": self.dataset.to_dict(),
                "relabel": self.relabel.to_dict(),
                "plan": self.plan.to_dict(),
                "codec": self.codec.to_dict(),
                "layout": self.store_layout.to_dict(),
            },
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> ExportRecord:
        def bad(what: str) -> InteropError:
            return InteropError(
                f"{where}: expected an lpldstore export sidecar ({what}). Fix or remove the file, or import with "
                "--ignore-sidecar to read the labels as plain peer files."
            )

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise bad(f'a JSON object with "format": "{FORMAT}"')
        if data.get("version") != VERSION:
            raise bad(f"version {VERSION}, got another one; upgrade lpldstore if it is newer")
        records = data.get("records")
        if not isinstance(records, dict):
            raise bad('a "records" object')
        layout, entries, source, images = (data.get(k) for k in ("layout", "entries", "source", "images"))
        if not isinstance(layout, str) or not isinstance(entries, int) or isinstance(entries, bool):
            raise bad('"layout" (a name) and "entries" (an integer)')
        if not isinstance(source, dict) or not (images is None or isinstance(images, str)):
            raise bad('"source" (an object) and "images" (a folder name or null)')
        try:
            return cls(
                layout=layout,
                entries=entries,
                dataset=DatasetInfo.from_dict(records.get("dataset")),  # type: ignore[arg-type]
                relabel=RelabelConfig.from_dict(records.get("relabel")),  # type: ignore[arg-type]
                plan=PruningPlan.from_dict(records.get("plan")),  # type: ignore[arg-type]
                codec=CodecConfig.from_dict(records.get("codec")),  # type: ignore[arg-type]
                store_layout=Layout.from_dict(records.get("layout")),  # type: ignore[arg-type]
                source=source,
                images=images,
            )
        except ConfigError as exc:
            raise bad(f"valid records: {exc}") from exc


def sidecar_text(record: ExportRecord) -> str:
    """The sidecar's JSON text (sorted keys: the same store exports to the same bytes)."""
    return json.dumps(record.to_json(), indent=1, sort_keys=True) + "\n"


def read_sidecar(label_dir: str | os.PathLike[str]) -> ExportRecord | None:
    """The export record beside ``label_dir``, or None if it has none."""
    path = sidecar_path(label_dir)
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_BYTES:
        raise InteropError(
            f"{path}: expected an export sidecar of at most {MAX_BYTES:,} bytes. Got {path.stat().st_size:,} bytes; "
            "remove it or import with --ignore-sidecar."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InteropError(
            f"{path}: expected the JSON of an lpldstore export sidecar. Got an unreadable file ({type(exc).__name__}); "
            "remove it or import with --ignore-sidecar."
        ) from exc
    return ExportRecord.from_json(data, str(path))
