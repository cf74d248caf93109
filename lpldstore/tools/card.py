"""``lpldstore card``: a README-style Markdown summary of a store, for publishing it.

The card is written for a dataset hub (a YAML header with the licence, as Hugging Face reads it):
what the store holds, the teacher and recipe, pruning, the codec with its measured fidelity, the
storage table, the provenance with local paths reduced to their last component, the student's
accuracy when the run's ``report.json`` is at hand, the licence and how to cite the methods.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lpldstore.errors import ConfigError
from lpldstore.storage._open import StoreLike, is_url
from lpldstore.storage.reader import LabelStore, open_store
from lpldstore.tools.identity import public_name
from lpldstore.tools.sizes import storage_bytes

__all__ = ["CITATIONS", "find_report", "read_report", "store_card"]

#: The methods a store's labels follow: SRe2L's relabel recipe and LPLD's label pruning.
CITATIONS = (
    """@inproceedings{yin2023squeeze,
  title     = {Squeeze, Recover and Relabel: Dataset Condensation at ImageNet Scale From A New Perspective},
  author    = {Yin, Zeyuan and Xing, Eric and Shen, Zhiqiang},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2023}
}""",
    """@inproceedings{xiao2024lpld,
  title     = {Are Large-scale Soft Labels Necessary for Large-scale Dataset Distillation?},
  author    = {Xiao, Lingao and He, Yang},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024},
  note      = {arXiv:2410.15919}
}""",
)
# The run report that `lpld run` writes beside its store (lpld_pipeline/artifacts.py: REPORT).
REPORT_NAME = "report.json"
_MAX_TEXT = 1 << 20  # a report or citation file larger than this is not one
_SPDX = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")


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


def _public(value: Any) -> Any:
    """Provenance fit for publishing: bulky encoded arrays named, not printed; local paths reduced
    to their last component; URLs without their query (which may hold a token)."""
    if isinstance(value, Mapping):
        return {k: (f"<{len(v)} chars>" if str(k).endswith("_b64") else _public(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_public(v) for v in value]
    if isinstance(value, str):
        if "://" in value:
            parts = urlsplit(value)
            return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
        if "/" in value or "\\" in value or _WINDOWS_PATH.match(value) or value.startswith("~"):
            return f".../{public_name(value)}"
    return value


def read_report(path: str | Path) -> dict[str, Any]:
    """The accuracies of an ``lpld run`` report (``report.json``); ConfigError if it is not one."""
    file = Path(path)
    try:
        if file.stat().st_size > _MAX_TEXT:
            raise ConfigError(
                f"{file}: expected an lpld run report. Got a file of {file.stat().st_size:,} bytes."
            )
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(
            f"{file}: expected an lpld run report (JSON). Got an unreadable file ({type(exc).__name__})."
        ) from exc

    def fraction(key: str, required: bool) -> float | None:
        value = data.get(key) if isinstance(data, dict) else None
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ConfigError(
                f"{file}: expected {key!r}, an accuracy in [0, 1], as `lpld run` writes it. Got none."
            )
        return float(value)

    top1 = fraction("top1", True)
    classes = data.get("num_classes")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise ConfigError(
            f"{file}: expected 'num_classes', a positive integer, as `lpld run` writes it. Got none."
        )
    source = data.get("store_info", {}).get("source") if isinstance(data.get("store_info"), dict) else None
    return {
        "top1": top1,
        "best_top1": fraction("best_top1", False),
        "teacher_top1": fraction("teacher_top1", False),
        "num_classes": classes,
        "store": source if isinstance(source, str) else None,
    }


def find_report(source: StoreLike) -> Path | None:
    """``report.json`` beside a local store, when it is the report of that store (``lpld run``'s layout)."""
    if is_url(source):
        return None
    candidate = Path(source).parent / REPORT_NAME
    if not candidate.is_file():
        return None
    try:
        report = read_report(candidate)
    except ConfigError:
        return None
    store = report["store"]
    return candidate if store is not None and public_name(store) == public_name(source) else None


def store_card(
    source: StoreLike,
    *,
    license: str | None = None,
    citation: str | None = None,
    report: str | Path | None = None,
) -> str:
    """The Markdown card of the store at ``source`` (directory, zip or URL).

    ``license`` is an SPDX identifier (``cc-by-4.0``); ``citation`` BibTeX text of the distilled
    dataset itself (the methods' entries are always added); ``report`` an ``lpld run`` report
    whose student accuracy the card quotes (default: ``report.json`` beside a local store, when
    it names this store).
    """
    if license is not None and not _SPDX.fullmatch(license):
        raise ConfigError(
            f"Expected a licence as an SPDX identifier (e.g. cc-by-4.0, apache-2.0, other). Got {license!r} instead."
        )
    found = Path(report) if report is not None else find_report(source)
    run = None if found is None else read_report(found)
    with open_store(source) as store:
        return _card(store, source, license=license, citation=citation, run=run, report=found)


def _card(
    store: LabelStore,
    source: StoreLike,
    *,
    license: str | None = None,
    citation: str | None = None,
    run: dict[str, Any] | None = None,
    report: Path | None = None,
) -> str:
    d, p, r, c, prov = store.dataset, store.plan, store.relabel, store.codec, store.provenance
    committed = int(store.committed().sum())
    lines = [
        "---",
        f"license: {license.lower() if license else 'unknown'}",
        "tags: [dataset-distillation, soft-labels, knowledge-distillation, lpldstore]",
        "---",
        "",
        f"# {d.name}: distilled images with pruned soft labels (lpldstore)",
        "",
    ]
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
            (
                "composition",
                f"{p.composition} (seed {p.seed}{', SRe2L sampler' if p.sampler == 'sre2l' else ''})",
            ),
        ]
    )
    lines += ["", "## Logits codec", ""]
    codec_rows: list[tuple[str, Any]] = [("codec", c.name)]
    params = dict(c.params)
    fidelity = params.pop("fidelity", None)
    if params:
        codec_rows.append(("parameters", f"`{json.dumps(params, sort_keys=True)}`"))
    measured = store.fidelity()
    if fidelity:
        described = f"`{json.dumps(fidelity, sort_keys=True)}`"
    elif measured is not None and measured.max_abs_error is not None:
        described = (
            f"measured by the writer on {measured.rows:,} rows: max abs logit error {measured.max_abs_error:.4g}, "
            f"KL {measured.kl:.3g} at T={measured.temperature:g}"
        )
    elif c.name == "float16":
        described = (
            "float16 rounding of the teacher's float32 logits (relative error at most 2^-11 per logit; "
            "not lossless); `lpldstore info` shows the measured error where the writer recorded it"
        )
    else:
        described = "not recorded"
    codec_rows.append(("fidelity", described))
    lines += _table(codec_rows)
    sizes = storage_bytes(store)
    lines += ["", "## Storage", "", "| component | bytes | |", "|---|---:|---:|"]
    lines += [f"| {name} | {size:,} | {_bytes(size)} |" for name, size in sizes.items()]
    lines += ["", "## Provenance", ""]
    parents = [str(p.get("name", p.get("source", "?"))) for p in prov.parents]
    lines += _table(
        [
            ("lpldstore version", prov.lpldstore_version),
            ("created (UTC)", prov.created_utc),
            (
                "derived from",
                ", ".join(
                    f"`{_public(n)}` ({p.get('operation', '?')})"
                    for n, p in zip(parents, prov.parents, strict=True)
                )
                or "none",
            ),
        ]
    )
    if prov.config:
        lines += ["", "```json", json.dumps(_public(prov.config), indent=2, sort_keys=True), "```"]
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
    if run is not None:
        lines += ["", "## Student accuracy", ""]
        rows_run: list[tuple[str, Any]] = [
            ("student top-1 on the real validation set", f"{run['top1']:.2%}"),
        ]
        if run["best_top1"] is not None:
            rows_run.append(("best epoch", f"{run['best_top1']:.2%}"))
        if run["teacher_top1"] is not None:
            rows_run.append(("teacher top-1 on the same set", f"{run['teacher_top1']:.2%}"))
        rows_run.append(("chance", f"{1 / run['num_classes']:.2%}"))
        lines += _table(rows_run)
        lines += ["", f"From the `lpld run` report `{public_name(report) if report else REPORT_NAME}`."]
    name = source if is_url(source) else Path(str(source)).name
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import lpldstore as ls",
        "",
        f'dataset = ls.PoolDataset("{_public(str(name)) if is_url(source) else name}", policy="ilp", output="triple")',
        "for epoch in range(epochs):",
        "    dataset.set_epoch(epoch)",
        "    for images, soft_logits, hard_labels in dataset:  # float32, CutMix replayed",
        "        ...",
        "```",
        "",
        "Check it with `lpldstore verify STORE` (every chunk checksummed) and, with the teacher,",
        "`lpld verify STORE --teacher CKPT`.",
        "",
        "## Licence",
        "",
        f"`{license}`." if license else "Not stated: pass `lpldstore card --license SPDX-ID`.",
        "The images are distilled from the teacher's training data; its terms may apply to them too.",
        "",
        "## Citation",
        "",
    ]
    if citation:
        lines += ["This dataset:", "", "```bibtex", citation.strip(), "```", ""]
    lines += [
        "The relabel recipe (SRe2L) and the label pruning (LPLD) these labels follow:",
        "",
        "```bibtex",
        "\n\n".join(CITATIONS),
        "```",
        "",
    ]
    return "\n".join(lines)
