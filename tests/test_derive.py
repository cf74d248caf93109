"""Re-pruning, re-coding and byte budgets: derived stores equal directly written ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lpldstore import (
    CodecConfig,
    ConfigError,
    PruningPlan,
    StoreExistsError,
    ValidationError,
    open_store,
    storage_bytes,
    verify_store,
)
from lpldstore.cli import main
from lpldstore.format.fidelity import fidelity_sampled
from lpldstore.storage.reader import LabelStore
from lpldstore.testing import fill, make_store
from lpldstore.tools.budget import entry_bytes_bound, parse_size, plan_for_budget
from lpldstore.tools.derive import parse_codec, prune, recode
from lpldstore.tools.identity import records_digest

PLAN = PruningPlan(num_images=9, batch_size=4, epochs=6, ratio=1.0, last_batch="pad")
CODEC = CodecConfig(name="quantized", params={"bits": 5}, fidelity_rate=1.0)


def _write(path: Path, plan: PruningPlan, codec: CodecConfig = CODEC) -> Path:
    with make_store(path, plan=plan, num_classes=7, codec=codec) as writer:
        fill(writer)
    return path


def _assert_same_content(a: LabelStore, b: LabelStore) -> None:
    for record in ("dataset", "plan", "relabel", "codec", "layout"):
        assert getattr(a.attrs, record) == getattr(b.attrs, record), record
    for path in (
        "images/pixels",
        "images/labels",
        *(
            f"pool/{n}"
            for n in (
                "key",
                "indices",
                "crop",
                "flip",
                "mix_index",
                "mix_lam",
                "mix_box",
                "logits",
                "committed",
                "fidelity",
            )
        ),
    ):
        assert np.array_equal(a.array(path)[:], b.array(path)[:], equal_nan=True), path


@pytest.mark.parametrize(("strategy", "ratio"), [("prefix", 4.0), ("epoch", 3.0)])
def test_repruned_store_equals_one_written_directly(tmp_path: Path, strategy: str, ratio: float) -> None:
    parent_plan = PruningPlan.from_dict(PLAN.to_dict() | {"strategy": strategy, "ratio": 1.5})
    parent = _write(tmp_path / "parent.zarr", parent_plan)
    child = prune(parent, tmp_path / "child.zarr", ratio=ratio)
    direct = _write(tmp_path / "direct.zarr", PruningPlan.from_dict(parent_plan.to_dict() | {"ratio": ratio}))
    with open_store(child) as c, open_store(direct) as d:
        _assert_same_content(c, d)
        assert c.is_complete
        lineage = c.provenance.parents
        assert lineage[0]["operation"] == "prune"
        # The parent by name and digests, no local path (provenance is published with the store).
        with open_store(parent) as p:
            assert lineage[0]["records_sha256"] == records_digest(p)
            assert c.dataset.images_sha256 == p.dataset.images_sha256
        assert lineage[0]["name"] == "parent.zarr"
        assert str(tmp_path) not in json.dumps(c.provenance.to_dict())
        assert lineage[0]["plan"]["ratio"] == 1.5
    # Pruning twice records the whole lineage, nearest parent first.
    grandchild = prune(child, tmp_path / "grandchild.zarr", ratio=ratio * 2)
    with open_store(grandchild) as g:
        assert [p["name"] for p in g.provenance.parents] == ["child.zarr", "parent.zarr"]
    assert verify_store(child).ok


def test_recode_to_each_codec_and_back(tmp_path: Path) -> None:
    parent = _write(tmp_path / "parent.zarr", PLAN, CodecConfig())
    for i, codec in enumerate(
        [
            CodecConfig(name="quantized", params={"bits": 4}, fidelity_rate=1.0),
            CodecConfig(name="topk", params={"k": 3, "tail": "MRS"}),  # the default sample
        ]
    ):
        out = recode(parent, tmp_path / f"r{i}.zarr", codec=codec)
        with open_store(parent) as p, open_store(out) as r:
            assert r.codec == codec
            assert r.provenance.parents[0]["operation"] == "recode"
            impl = codec.codec(7)
            for pos in range(p.num_entries):
                n = p.plan.batch_length(int(p.keys[pos, 1]))
                src = p.logits_at(pos)[:n].astype(np.float32)
                assert np.array_equal(r.logits_at(pos)[:n], impl.decode(impl.encode(src)))
            fid = r.fidelity()
            assert fid is not None
            sampled = [
                p.plan.batch_length(b)
                for e, b in p.keys.tolist()
                if fidelity_sampled(e * p.plan.batches_per_epoch + b, codec.fidelity_rate)
            ]
            if codec.fidelity_rate == 1:
                assert fid.rows == 9 * 6
            else:  # the writer's sample of entries
                assert 0 < len(sampled) < p.num_entries
                assert fid.rows == sum(sampled)
            assert 0 <= fid.kl_reverse < 0.1
        assert verify_store(out).ok
    # float16 -> quantized -> float16 keeps the quantized values exactly (they fit float16 here).
    back = recode(tmp_path / "r0.zarr", tmp_path / "back.zarr", codec=CodecConfig())
    with open_store(tmp_path / "r0.zarr") as q, open_store(back) as b:
        assert np.allclose(b.logits_at(0), q.logits_at(0), atol=0.02)


def test_recoding_the_same_codec_is_a_bit_exact_copy(tmp_path: Path) -> None:
    parent = _write(tmp_path / "parent.zarr", PLAN)
    out = recode(parent, tmp_path / "copy.zarr", codec=CODEC)
    with open_store(parent) as p, open_store(out) as c:
        _assert_same_content(p, c)


def test_budget_prune_fits_and_keeps_the_most(tmp_path: Path) -> None:
    parent = _write(tmp_path / "parent.zarr", PLAN)
    with open_store(parent) as p:
        sizes = storage_bytes(p)
    budget = sizes["images"] + sizes["metadata"] + (sizes["total"] - sizes["images"] - sizes["metadata"]) // 3
    out = prune(parent, tmp_path / "b.zarr", budget=f"{budget}B")
    with open_store(out) as b:
        assert storage_bytes(b)["total"] <= budget
        assert 0 < b.num_entries < PLAN.total_entries
        kept = b.num_entries
    # One more entry would not have fitted at the parent's measured bytes per entry.
    per_entry = (sizes["total"] - sizes["images"] - sizes["metadata"]) / PLAN.total_entries
    assert sizes["images"] + sizes["metadata"] + (kept + 1) * per_entry > budget * 0.9


def test_budget_larger_than_the_parent_keeps_everything(tmp_path: Path) -> None:
    parent = _write(tmp_path / "parent.zarr", PruningPlan.from_dict(PLAN.to_dict() | {"ratio": 2.0}))
    out = prune(parent, tmp_path / "b.zarr", budget="1GB")
    with open_store(parent) as p, open_store(out) as b:
        _assert_same_content(p, b)


def test_plan_for_budget_and_sizes() -> None:
    assert parse_size("100MB") == 100_000_000
    assert parse_size("1.5 GiB") == 3 * 2**29
    assert parse_size(1234) == 1234
    plan = PruningPlan(num_images=10_000, batch_size=128, epochs=300)
    per_entry = entry_bytes_bound(CodecConfig(), 1000, 128)
    assert per_entry > 128 * 1000 * 2
    budget = 100_000_000
    fitted = plan_for_budget(plan, budget, fixed_bytes=10_000_000, entry_bytes=per_entry)
    assert 10_000_000 + fitted.num_kept * per_entry <= budget < 10_000_000 + (fitted.num_kept + 1) * per_entry
    epoch_plan = PruningPlan(num_images=10_000, batch_size=128, epochs=300, strategy="epoch")
    fitted = plan_for_budget(epoch_plan, budget, fixed_bytes=0, entry_bytes=per_entry)
    assert fitted.num_kept % 78 == 0
    assert fitted.num_kept * per_entry <= budget


@pytest.mark.parametrize("text", ["", "12 parsecs", "-5MB", "0"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="size"):
        parse_size(text)


def test_budget_too_small_writes_nothing(tmp_path: Path) -> None:
    parent = _write(tmp_path / "parent.zarr", PLAN)
    with pytest.raises(ValidationError, match="does not fit: the images and metadata take"):
        prune(parent, tmp_path / "b.zarr", budget="100B")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parent.zarr"]


def test_prune_refuses_entries_the_parent_does_not_hold(tmp_path: Path) -> None:
    parent = _write(tmp_path / "parent.zarr", PruningPlan.from_dict(PLAN.to_dict() | {"ratio": 3.0}))
    with pytest.raises(ValidationError, match="does not hold"):
        prune(parent, tmp_path / "c.zarr", ratio=3.0, strategy="random")
    with pytest.raises(ValidationError, match="does not hold"):
        prune(parent, tmp_path / "c.zarr", ratio=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parent.zarr"]


def test_prune_refuses_an_incomplete_parent_and_an_existing_output(tmp_path: Path) -> None:
    with make_store(tmp_path / "parent.zarr", plan=PLAN, num_classes=7) as writer:
        fill(writer, limit=3)
    with pytest.raises(ValidationError, match="is incomplete"):
        prune(tmp_path / "parent.zarr", tmp_path / "c.zarr", ratio=2.0)
    (tmp_path / "exists").mkdir()
    with pytest.raises(StoreExistsError, match="already exists"):
        prune(tmp_path / "parent.zarr", tmp_path / "exists", ratio=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "parent.zarr"]


def test_interrupted_derive_leaves_no_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = _write(tmp_path / "parent.zarr", PLAN)
    from lpldstore.tools import derive

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(derive, "_copy_entries", boom)
    with pytest.raises(KeyboardInterrupt):
        prune(parent, tmp_path / "c.zarr", ratio=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parent.zarr"]


def test_cli_prune_recode_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = _write(tmp_path / "parent.zarr", PLAN, CodecConfig())
    assert main(["prune", str(parent), str(tmp_path / "p.zarr"), "--ratio", "2"]) == 0
    assert (
        main(["recode", str(tmp_path / "p.zarr"), str(tmp_path / "r.zarr"), "--codec", "topk:k=2,tail=MR"])
        == 0
    )
    capsys.readouterr()
    assert main(["info", str(tmp_path / "r.zarr")]) == 0
    out = capsys.readouterr().out
    assert "topk(k=2, tail=MR)" in out
    assert "bytes/entry" in out
    assert "KL" in out
    assert main(["recode", str(parent), str(tmp_path / "x.zarr"), "--codec", "quantized:bits=9"]) == 2
    assert "params.bits must be an integer in [2, 8]" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


def test_parse_codec() -> None:
    assert parse_codec("quantized:bits=4") == CodecConfig(name="quantized", params={"bits": 4})
    assert parse_codec("topk:k=100,tail=MS", 4.0) == CodecConfig(
        name="topk", params={"k": 100, "tail": "MS"}, temperature=4.0
    )
    with pytest.raises(ConfigError, match="key=value"):
        parse_codec("quantized:bits")
