"""Deriving a smaller store from an existing one, without the teacher: re-pruning and re-coding.

:func:`prune` keeps a subset of the parent's entries (a stricter plan, or the plan that fits a
byte budget); :func:`recode` stores the logits with another codec. Entries are copied exactly:
with an unchanged codec the stored bytes and the measured fidelity are copied as they are, so a
re-pruned store holds exactly what a store written directly with the same plan holds. Re-coding
decodes the parent's logits and encodes them anew; its fidelity is then measured against the
parent's decoded logits (the teacher is not at hand), which the lineage records.

A derived store is built in a hidden sibling directory and renamed into place only when every
entry is committed: an interrupted prune or recode leaves no store at the output path.

Digests (format version 3): every entry copied from a bound parent is first checked against the
parent's digests (a damaged or tampered parent is refused, not laundered into a new store), and
the derived store, which has its own store id and records, gets its own digests, computed from
exactly what is written. :func:`upgrade` rewrites a version-1 or version-2 store as version 3
after a full ``verify`` of it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
from tqdm import tqdm
from zarr.storage import LocalStore

from lpldstore.errors import ConfigError, StoreDamagedError, StoreExistsError, ValidationError
from lpldstore.format.arrays import bound_fields, record_fields
from lpldstore.format.entries import digest_row, entry_digest_problem, logits_digest_problem
from lpldstore.format.fidelity import FIDELITY_FIELDS, fidelity_sampled, fidelity_sums
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import CodecConfig
from lpldstore.format.schema import FORMAT_VERSION, StoreAttrs
from lpldstore.storage.reader import LabelStore, open_store
from lpldstore.storage.writer import StoreWriter
from lpldstore.tools.budget import parse_size, plan_for_budget
from lpldstore.tools.identity import store_identity
from lpldstore.tools.label_metrics import select_by_metric
from lpldstore.tools.sizes import storage_bytes

__all__ = ["derive_store", "parse_codec", "prune", "recode", "upgrade"]

_SCHEDULE = ("num_images", "batch_size", "epochs", "seed", "last_batch", "composition")


def parse_codec(text: str, temperature: float | None = None) -> CodecConfig:
    """A codec from ``NAME[:key=value,...]``, e.g. ``quantized:bits=4`` or ``topk:k=100,tail=MRS``."""
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Expected codec parameters as key=value. Got {item!r} in {text!r} instead.")
        params[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    extra = {} if temperature is None else {"temperature": temperature}
    return CodecConfig(name=name.strip(), params=params, **extra)


def _lineage(parent: LabelStore, operation: str) -> tuple[dict[str, Any], ...]:
    # The parent by name and digests (tools/identity.py), never by its local path.
    record = {
        "operation": operation,
        **store_identity(parent),
        "created_utc": parent.provenance.created_utc,
        "lpldstore_version": parent.provenance.lpldstore_version,
        "plan": parent.plan.to_dict(),
        "codec": parent.codec.to_dict(),
    }
    # Nearest parent first, then the parent's own ancestry: the whole lineage in one list.
    return (record, *(dict(p) for p in parent.provenance.parents))


def _check_plan(parent: LabelStore, plan: PruningPlan) -> npt.NDArray[np.int64]:
    """Parent positions of ``plan``'s kept entries; ValidationError unless all are held and committed."""
    old = parent.plan
    differ = [f for f in _SCHEDULE if getattr(plan, f) != getattr(old, f)]
    if differ:
        raise ValidationError(
            f"The new plan changes {differ} of the parent's schedule; a derived store can only keep fewer "
            "of the parent's entries. Change only the ratio and the strategy."
        )
    pos = np.searchsorted(old.kept_ids, plan.kept_ids)
    held = (pos < old.num_kept) & (old.kept_ids[np.minimum(pos, old.num_kept - 1)] == plan.kept_ids)
    if not held.all():
        raise ValidationError(
            f"The {plan.strategy} plan at ratio {plan.ratio:g} keeps {int((~held).sum())} entries that the parent "
            f"({old.strategy} at ratio {old.ratio:g}) does not hold. Prefix plans nest in prefix plans and "
            "epoch plans in epoch plans; a random plan nests in no other."
        )
    committed = parent.committed()[pos]
    if not committed.all():
        raise ValidationError(
            f"{parent.where} is incomplete: {int((~committed).sum())} of the entries to keep are not committed. "
            "Finish writing it (StoreWriter.open) before deriving a store from it."
        )
    return pos.astype(np.int64)


def derive_store(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    plan: PruningPlan | None = None,
    codec: CodecConfig | None = None,
    operation: str = "derive",
    progress: bool = False,
) -> Path:
    """Write a store at ``out`` holding ``plan``'s entries of ``source`` with ``codec`` (both default to the parent's)."""
    target = Path(out)
    if target.exists():
        raise StoreExistsError(f"{target} already exists. Choose another output path or remove it first.")
    with open_store(source) as parent:
        new_plan = plan or parent.plan
        new_codec = codec or parent.codec
        positions = _check_plan(parent, new_plan)
        new_codec.codec(parent.dataset.num_classes)  # ConfigError before anything is written
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.deriving-{uuid.uuid4().hex[:8]}")
        try:
            writer = StoreWriter.create(
                staging,
                plan=new_plan,
                images=parent.images(),
                labels=parent.labels(),
                dataset=parent.dataset,
                relabel=parent.relabel,
                codec=new_codec,
                layout=parent.layout,
                config=parent.provenance.config,
                parents=_lineage(parent, operation),
            )
            child = writer.attrs
            writer.close()
            _copy_entries(parent, staging, positions, new_codec, child, progress=progress, what=operation)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _copy_entries(
    parent: LabelStore,
    path: Path,
    positions: npt.NDArray[np.int64],
    codec: CodecConfig,
    child: StoreAttrs,
    *,
    progress: bool = False,
    what: str = "derive",
) -> None:
    root = zarr.open_group(LocalStore(path), mode="r+", zarr_format=3)
    record = record_fields(parent.attrs)
    pool: dict[str, Any] = {}
    for name in (*record, "logits", "committed", "fidelity", "digest"):
        node = root.get(f"pool/{name}")
        if isinstance(node, zarr.Array):
            pool[name] = node.with_config({"write_empty_chunks": True})
    classes, plan = parent.dataset.num_classes, parent.plan
    old_codec, new_codec = parent.attrs.logits_codec, codec.codec(classes)
    same = parent.codec == codec
    block = parent.layout.block_entries
    has_fidelity = "fidelity" in pool and "pool/fidelity" in parent.attrs.arrays
    if not same and old_codec.name == "topk" and new_codec.name.startswith("quantized"):
        raise ValidationError(
            f"{parent.where} keeps only the top-{parent.codec.params.get('k')} logits; quantizing the decoded rows "
            "would spend every level on the dropped tail. Recode it to float16 or topk instead."
        )
    bar = tqdm(total=len(positions), desc=what, unit="entry", disable=not progress)
    for start in range(0, len(positions), block):
        span = slice(start, min(start + block, len(positions)))
        src = positions[span]
        bar.update(len(src))
        rows = {
            name: np.asarray(parent.array(f"pool/{name}").get_orthogonal_selection((src,))) for name in record
        }
        raw = np.asarray(parent.array("pool/logits").get_orthogonal_selection((src,)))
        if has_fidelity:
            rows["fidelity"] = np.asarray(parent.array("pool/fidelity").get_orthogonal_selection((src,)))
        _check_parent(parent, src, rows, raw)
        for name in record:
            pool[name][span] = rows[name]
        if same:
            stored = raw
            fidelity = rows["fidelity"] if has_fidelity else None
        else:
            stored = np.empty(pool["logits"].shape[1:], dtype=pool["logits"].dtype)[None].repeat(len(src), 0)
            fidelity = np.full((len(src), len(FIDELITY_FIELDS)), np.nan)
            for i, p in enumerate(src.tolist()):
                n = plan.batch_length(int(plan.key_at(p)[1]))
                decoded = old_codec.decode(raw[i])
                if not np.isfinite(decoded[:n]).all():
                    parent.logits_at(p)  # raises StoreDamagedError naming the entry
                # An MR tail (a dropped class) stays dropped: float16's lowest value is zero after softmax.
                decoded = np.maximum(decoded.astype(np.float32), np.float32(-65504))
                source = decoded.astype(np.float16) if new_codec.lossless else decoded
                stored[i] = new_codec.encode(source)
                epoch, batch = (int(v) for v in plan.key_at(p))
                if not new_codec.lossless and fidelity_sampled(
                    epoch * plan.batches_per_epoch + batch, float(codec.fidelity_rate)
                ):  # the writer's sample (lpldstore.format.fidelity.fidelity_sampled)
                    fidelity[i] = fidelity_sums(
                        decoded[:n], new_codec.decode(stored[i][:n]), float(codec.temperature)
                    )
        if "fidelity" in pool:
            # Not measured (NaN) where the parent kept no fidelity: written, so the chunk exists.
            fidelity = fidelity if fidelity is not None else np.full((len(src), len(FIDELITY_FIELDS)), np.nan)
            pool["fidelity"][span] = fidelity
            rows["fidelity"] = fidelity
        pool["logits"][span] = stored
        if "digest" in pool:
            # The derived store's own digests, of exactly what was written into it.
            keys = plan.kept_keys[src]
            pool["digest"][span] = np.stack(
                [
                    digest_row(child, int(e), int(b), {k: v[i] for k, v in rows.items()}, stored[i])
                    for i, (e, b) in enumerate(keys.tolist())
                ]
            )
    bar.close()
    # Commit flags last, as the writer does.
    pool["committed"][:] = np.ones(len(positions), dtype=bool)


def _check_parent(
    parent: LabelStore, src: npt.NDArray[np.int64], rows: dict[str, Any], raw: npt.NDArray[Any]
) -> None:
    """Refuse to copy an entry that does not match the parent's digests (bound parents only)."""
    if not parent.bound:
        return
    digests = np.asarray(parent.array("pool/digest").get_orthogonal_selection((src,)))
    names = bound_fields(parent.attrs)
    for i, p in enumerate(src.tolist()):
        epoch, batch = parent.plan.key_at(p)
        row = {name: rows[name][i] for name in names}
        problem = logits_digest_problem(
            parent.attrs, epoch, batch, raw[i], digests[i]
        ) or entry_digest_problem(parent.attrs, epoch, batch, row, digests[i])
        if problem:
            raise StoreDamagedError(
                f"{parent.where}: entry (epoch={epoch}, batch={batch}): {problem}. Nothing was derived; run "
                "`lpldstore verify` on the parent."
            )


def _measured_sizes(store: LabelStore) -> tuple[int, float]:
    sizes = storage_bytes(store)
    fixed = sizes["images"] + sizes["metadata"]
    return fixed, (sizes["total"] - fixed) / store.num_entries


def prune(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    ratio: float | None = None,
    budget: int | str | None = None,
    strategy: str | None = None,
    progress: bool = False,
    metric: str | None = None,
    keep: str = "easy",
) -> Path:
    """A store keeping fewer of ``source``'s entries: at ``ratio`` of the full schedule, or within ``budget`` bytes.

    With a budget the ratio is chosen from the parent's measured bytes per entry and checked after
    writing; if compression made the kept entries larger than the average, fewer are kept. With a
    ``metric`` (``confidence`` or ``margin`` of the stored logits, see :mod:`lpldstore.tools.label_metrics`)
    the ``keep="easy"`` (highest) or ``"hard"`` (lowest) entries are kept instead of the strategy's.
    """
    if (ratio is None) == (budget is None):
        raise ConfigError("Give exactly one of ratio and budget.")
    if metric is not None:
        if ratio is None or strategy is not None:
            raise ConfigError(
                "Pruning by a metric takes a ratio and no strategy (it chooses the entries itself)."
            )
        with open_store(source) as parent:
            plan = select_by_metric(parent, ratio, metric, keep)  # type: ignore[arg-type]
        return derive_store(
            source, out, plan=plan, operation=f"prune by {metric} ({keep})", progress=progress
        )
    with open_store(source) as parent:
        base = PruningPlan.from_dict(parent.plan.to_dict() | ({"strategy": strategy} if strategy else {}))
        if ratio is not None:
            return derive_store(
                source,
                out,
                plan=PruningPlan.from_dict(base.to_dict() | {"ratio": ratio}),
                operation="prune",
                progress=progress,
            )
        limit = parse_size(budget)  # type: ignore[arg-type]
        fixed, per_entry = _measured_sizes(parent)
        held = parent.plan
    target = Path(out)
    if target.exists():
        raise StoreExistsError(f"{target} already exists. Choose another output path or remove it first.")
    # Each attempt is a finished store, so it is measured under a hidden name: a kill between an
    # attempt and its size check must not leave an over-budget store at ``out``.
    trial = target.with_name(f".{target.name}.budget-{uuid.uuid4().hex[:8]}")
    kept: int | None = None
    for _ in range(16):
        plan = plan_for_budget(base, limit, fixed_bytes=fixed, entry_bytes=per_entry)
        if plan.num_kept >= held.num_kept and plan.strategy == held.strategy:
            plan = held  # the budget holds everything the parent has: keep it all
        if kept is not None and plan.num_kept >= kept:
            # The estimate did not move: step down by one entry so the search always ends.
            plan = (
                plan_for_budget(base, limit, fixed_bytes=0, entry_bytes=limit / (kept - 1))
                if kept > 1
                else plan
            )
        try:
            derive_store(source, trial, plan=plan, operation="prune", progress=progress)
            with open_store(trial) as child:
                fixed, per_entry = _measured_sizes(child)
                total, kept = storage_bytes(child)["total"], child.num_entries
            if total <= limit:
                os.rename(trial, target)
                return target
        finally:
            shutil.rmtree(trial, ignore_errors=True)
    raise ValidationError(f"Could not fit {source} into {limit:,} bytes.")  # pragma: no cover


def recode(
    source: str | os.PathLike[str], out: str | os.PathLike[str], *, codec: CodecConfig, progress: bool = False
) -> Path:
    """A store holding the same entries as ``source`` with the logits in ``codec``."""
    return derive_store(source, out, codec=codec, operation="recode", progress=progress)


def upgrade(source: str | os.PathLike[str], out: str | os.PathLike[str], *, progress: bool = False) -> Path:
    """Rewrite a format version 1 or 2 store as version 3 at ``out`` (digests added; entries copied exactly).

    The source must be complete and pass ``verify`` first: digests bind what they are computed
    from, so a damaged or altered source would be made to look sound. Like prune, the new store is
    built under a hidden name and renamed into place at the end.
    """
    from lpldstore.tools.verify import verify_store

    target = Path(out)
    if target.exists():
        raise StoreExistsError(f"{target} already exists. Choose another output path or remove it first.")
    with open_store(source) as parent:
        version = parent.attrs.format_version
    if version >= FORMAT_VERSION:
        raise ValidationError(
            f"{source} is already format version {version}; there is nothing to upgrade (copy it, or `prune`/"
            "`recode` it, to get a store with its own digests)."
        )
    report = verify_store(source, progress=progress)
    if not report.ok:
        shown = "; ".join(str(p) for p in report.problems[:3])
        raise ValidationError(
            f"{source} does not pass verify ({len(report.problems)} problem(s): {shown}). Upgrading would bind "
            "the damage into digests; restore the store first. Nothing was written."
        )
    return derive_store(source, out, operation="upgrade", progress=progress)
