"""``lpldstore card``: a README-style Markdown summary of a store, for publishing it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lpldstore.storage._open import StoreLike, is_url
from lpldstore.storage.reader import LabelStore, open_store
from lpldstore.tools.sizes import storage_bytes

__all__ = ["store_card"]


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    out = ["| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return out


def _without_blobs(value: Any) -> Any:
    # Provenance may carry bulky encoded arrays (exact imported lambdas): name them, do not print them.
    if isinstance(value, Mapping):
        return {
            k: (f"<{len(v)} chars>" if k.endswith("_b64") else _without_blobs(v)) for k, v in value.items()
        }
    return value


def store_card(source: StoreLike) -> str:
    """The Markdown card of the store at ``source`` (directory, zip or URL)."""
    with open_store(source) as store:
        return _card(store, source)


def _card(store: LabelStore, source: StoreLike) -> str:
    d, p, r, c, prov = store.dataset, store.plan, store.relabel, store.codec, store.provenance
    committed = int(store.committed().sum())
    lines = [f"# {d.name}: distilled images with pruned soft labels (lpldstore)", ""]
    lines += [
        (
            f"{d.num_images} distilled images ({d.image_shape[0]}x{d.image_shape[1]}, {d.num_classes} classes"
            f"{f', IPC {d.ipc}' if d.ipc else ''}) and {p.num_kept} soft-label entries of {p.batch_size} "
            f"images each, kept from {p.total_entries} ({p.epochs} augmentation epochs), in lpldstore format "
            f"version {store.attrs.format_version} (Zarr v3)."
        ),
        "",
        "## Dataset",
        "",
    ]
    lines += _table(
        [
            ("images", f"{d.num_images} x {tuple(d.image_shape)} uint8"),
            ("classes", d.num_classes),
            ("IPC", d.ipc if d.ipc is not None else "n/a"),
            ("normalization", f"mean {tuple(d.mean)}, std {tuple(d.std)}"),
            ("class names", "recorded" if d.class_names else "not recorded"),
        ]
    )
    lines += ["", "## Teacher and relabel recipe", ""]
    lines += _table(
        [
            ("teacher", f"`{r.teacher}`"),
            ("teacher weights SHA-256", f"`{r.teacher_sha256}`" if r.teacher_sha256 else "not recorded"),
            ("output size", f"{r.output_size[0]}x{r.output_size[1]}"),
            ("crop", f"scale {tuple(r.crop_scale)}, ratio {tuple(round(x, 4) for x in r.crop_ratio)}"),
            ("flip probability", r.flip_prob),
            ("mix", f"{r.mix} (alpha {r.mix_alpha})" if r.mix != "none" else "none"),
            ("kernel", f"`{r.kernel}`, {r.interpolation}, antialias {r.antialias}"),
            ("augmentation seed", r.seed),
        ]
    )
    lines += ["", "## Pruning", ""]
    lines += _table(
        [
            ("strategy", p.strategy),
            ("ratio", f"x{p.ratio:g} (actual x{p.actual_ratio:.2f})"),
            ("entries", f"{p.num_kept} kept of {p.total_entries}, {committed} committed"),
            ("batches", f"{p.batches_per_epoch} per epoch of {p.batch_size} (last batch: {p.last_batch})"),
            ("composition", f"{p.composition} (seed {p.seed})"),
        ]
    )
    lines += ["", "## Logits codec", ""]
    codec_rows: list[tuple[str, Any]] = [("codec", c.name)]
    params = dict(c.params)
    fidelity = params.pop("fidelity", None)
    if params:
        codec_rows.append(("parameters", f"`{json.dumps(params, sort_keys=True)}`"))
    codec_rows.append(
        (
            "fidelity",
            f"`{json.dumps(fidelity, sort_keys=True)}`"
            if fidelity
            else "lossless relative to the teacher's float16 logits"
            if c.name == "float16"
            else "not recorded",
        )
    )
    lines += _table(codec_rows)
    sizes = storage_bytes(store)
    lines += ["", "## Storage", "", "| component | bytes | |", "|---|---:|---:|"]
    lines += [f"| {name} | {size:,} | {_bytes(size)} |" for name, size in sizes.items()]
    lines += ["", "## Provenance", ""]
    lines += _table(
        [
            ("lpldstore version", prov.lpldstore_version),
            ("created (UTC)", prov.created_utc),
            ("parents", len(prov.parents) or "none"),
        ]
    )
    if prov.config:
        lines += ["", "```json", json.dumps(_without_blobs(prov.config), indent=2, sort_keys=True), "```"]
    lines += ["", "## Checksums", ""]
    rows: list[tuple[str, Any]] = [("images + labels SHA-256", f"`{d.images_sha256}`")]
    if not is_url(source) and Path(source).suffix == ".zip":
        from lpldstore.tools.pack import checksum_path

        sums = checksum_path(source)
        rows.append(
            (
                f"{Path(source).name} SHA-256",
                f"`{sums.read_text().split()[0]}`" if sums.is_file() else "no checksum file",
            )
        )
    lines += _table(rows)
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from lpldstore import PoolLoader",
        "",
        f'loader = PoolLoader("{Path(str(source)).name if not is_url(source) else source}", policy="ilp", seed=0)',
        "for epoch in range(epochs):",
        "    loader.set_epoch(epoch)",
        "    for batch in loader:  # batch.images, batch.logits (float32)",
        "        ...",
        "```",
        "",
        "Check it with `lpldstore verify STORE` (every chunk checksummed) and, with the teacher,",
        "`lpldstore verify STORE --teacher CKPT`.",
        "",
    ]
    return "\n".join(lines)
