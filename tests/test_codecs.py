"""Logit codecs: round trips within each codec's stated bound, tail rules, and stores per codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lpldstore import CodecConfig, ConfigError, PruningPlan, StoreDamagedError, open_store, verify_store
from lpldstore.format.codecs import CODECS, MR_TAIL, QuantizedCodec, TopKCodec
from lpldstore.format.fidelity import fidelity_sampled, fidelity_sums, summarize
from lpldstore.testing import fake_entry, fill, make_store


@st.composite
def logit_rows(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(1, 6))
    classes = draw(st.integers(2, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    spread = draw(st.sampled_from([0.0, 0.01, 1.0, 8.0, 200.0]))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, classes)) * spread + rng.uniform(-50, 50)
    return x.astype(np.float32)


@given(logit_rows())
def test_float16_is_exact(x: np.ndarray) -> None:
    codec = CODECS["float16"].build({}, x.shape[1], 20.0)
    decoded = codec.decode(codec.encode(x))
    assert decoded.dtype == np.float16
    assert np.array_equal(decoded, x.astype(np.float16))
    assert (np.abs(decoded.astype(np.float64) - x) <= codec.error_bound(x)).all()


@given(logit_rows(), st.integers(2, 8), st.sampled_from(["quantized", "quantized_entropy"]))
def test_quantized_round_trip_within_bound(x: np.ndarray, bits: int, name: str) -> None:
    codec = CODECS[name].build({"bits": bits}, x.shape[1], 20.0)
    stored = codec.encode(x)
    assert stored.dtype == np.uint8
    assert stored.shape == (len(x), codec.row_size)
    decoded = codec.decode(stored)
    assert decoded.shape == x.shape
    assert (np.abs(decoded.astype(np.float64) - x) <= codec.error_bound(x)).all()
    # The top code belongs to the argmax alone: top-1 survives any number of bits.
    spread = x.max(axis=1) > x.min(axis=1)
    assert np.array_equal(decoded.argmax(axis=1)[spread], x.argmax(axis=1)[spread])


def test_bit_packing_halves_the_bytes() -> None:
    assert QuantizedCodec(1000, 4).row_size - 8 == (QuantizedCodec(1000, 8).row_size - 8) // 2 == 500
    assert QuantizedCodec(1000, 2).row_size == 8 + 250
    assert QuantizedCodec(10, 3).row_size == 8 + 4  # 30 bits round up to 4 bytes


@given(logit_rows(), st.data())
def test_topk_round_trip_and_tail_rules(x: np.ndarray, data: st.DataObject) -> None:
    classes = x.shape[1]
    k = data.draw(st.integers(1, classes - 1))
    tail = data.draw(st.sampled_from(["MR", "MS", "MRS"]))
    codec = CODECS["topk"].build({"k": k, "tail": tail}, classes, 20.0)
    assert isinstance(codec, TopKCodec)
    decoded = codec.decode(codec.encode(x)).astype(np.float64)
    bound = codec.error_bound(x)
    assert (np.abs(decoded - x) <= bound).all()  # inf where nothing is promised
    order = np.argsort(-x.astype(np.float64), axis=1, kind="stable")[:, :k]
    in_top = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(in_top, order, True, axis=1)
    if tail == "MR":
        assert (decoded[~in_top] == MR_TAIL).all()
        assert np.array_equal(
            np.take_along_axis(decoded, order, axis=1),
            np.take_along_axis(x, order, axis=1).astype(np.float16).astype(np.float64),
        )
    elif tail == "MRS":
        mins = x.min(axis=1, keepdims=True).astype(np.float16).astype(np.float64)
        assert (decoded[~in_top] == np.broadcast_to(mins, x.shape)[~in_top]).all()
    else:
        # MS: softmax(decoded / T) is the stored top-k probabilities plus the rest spread uniformly.
        z = x.astype(np.float64) / 20.0
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        stored = np.take_along_axis(p, order, axis=1).astype(np.float16).astype(np.float64)
        q = np.exp(decoded / 20.0)
        tiny_rows = stored.sum(axis=1) < 0.999  # rows whose whole mass is not in the stored values
        rest = (1 - stored.sum(axis=1, keepdims=True)) / (classes - k)
        expect = np.broadcast_to(np.maximum(rest, 0), x.shape).copy()
        np.put_along_axis(expect, order, stored, axis=1)
        assert np.allclose(q[tiny_rows], expect[tiny_rows], rtol=1e-4, atol=1e-30)


def test_topk_index_type_is_the_smallest_that_fits() -> None:
    assert TopKCodec(256, 10).row_size == 10 * 3
    assert TopKCodec(257, 10).row_size == 10 * 4
    assert TopKCodec(70000, 10, "MRS").row_size == 10 * 6 + 2


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("quantized", {"bits": 1}, r"params.bits must be an integer in \[2, 8\]. Got 1"),
        ("quantized", {"bits": 4, "x": 1}, r"unknown params \['x'\]"),
        ("topk", {"k": 5, "tail": "XX"}, r"params.tail must be one of"),
        ("topk", {}, r"params.k must be an integer"),
        ("zfp", {}, r"name must be one of"),
    ],
)
def test_bad_codec_config_is_refused(name: str, params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CodecConfig(name=name, params=params)


def test_codec_config_from_dict_and_default() -> None:
    assert CodecConfig() == CodecConfig.from_dict({"name": "float16", "params": {}})
    config = CodecConfig.from_dict({"name": "quantized", "params": {"bits": 4}, "temperature": 4})
    assert CodecConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="temperature must be a positive number"):
        CodecConfig(temperature=0)


def test_fidelity_of_exact_and_of_mr_decoding() -> None:
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    exact = fidelity_sums(x, x, 20.0)
    assert exact[0] == pytest.approx(0, abs=1e-15)
    assert exact[2] == 1
    assert exact[3] == 0
    mr = TopKCodec(4, 2, "MR")
    sums = fidelity_sums(x, mr.decode(mr.encode(x)), 20.0)
    p = np.exp(x[0] / 20) / np.exp(x[0] / 20).sum()
    assert np.isinf(sums[0])  # the dropped classes had probability: KL(original || decoded) = inf
    assert sums[1] == pytest.approx(-np.log(p[2:].sum()))  # KL(decoded || original) = -log(top-k mass)
    fid = summarize(np.stack([sums, exact]), 20.0)
    assert fid is not None
    assert fid.rows == 2
    assert fid.top1_agreement == 1.0
    assert fid.to_dict()["kl"] is None
    assert fid.to_dict()["max_abs_error"] is None


CODEC_CASES = [
    CodecConfig(),
    CodecConfig(name="quantized", params={"bits": 3}, fidelity_rate=1.0),
    CodecConfig(name="quantized_entropy", params={"bits": 6}, fidelity_rate=0.5),
    CodecConfig(name="topk", params={"k": 2, "tail": "MRS"}),
    CodecConfig(name="topk", params={"k": 3, "tail": "MS"}, temperature=4.0, fidelity_rate=1.0),
]


@pytest.mark.parametrize("codec", CODEC_CASES, ids=lambda c: f"{c.name}{c.params}")
@pytest.mark.parametrize("sharded", [False, True])
def test_store_decodes_each_codec(tmp_path: Path, codec: CodecConfig, sharded: bool) -> None:
    from lpldstore import Layout

    plan = PruningPlan(num_images=7, batch_size=3, epochs=4, ratio=1.5, last_batch="pad")
    layout = Layout(block_entries=4, logits_shard_entries=4 if sharded else None)
    with make_store(tmp_path / "s.zarr", plan=plan, num_classes=6, codec=codec, layout=layout) as writer:
        fill(writer)
        attrs = writer.attrs
    impl = codec.codec(6)
    with open_store(tmp_path / "s.zarr") as store:
        assert store.codec == codec
        assert store.attrs.format_version == 3
        for pos, (e, b) in enumerate(plan.kept_keys.tolist()):
            raw = fake_entry(attrs.plan, attrs.dataset, attrs.relabel, e, b)["logits"]
            source = raw.astype(np.float16) if impl.lossless else raw
            expected = impl.decode(impl.encode(source))
            entry = store.entry(e, b)
            assert np.array_equal(entry.logits, expected)
            assert np.array_equal(store.logits_at(pos)[: len(raw)], expected)
        fid = store.fidelity()
        if impl.lossless:  # nothing to measure
            assert fid is None
        else:  # the entries of the recorded sample, and only those
            sampled = [
                plan.batch_length(b)
                for e, b in plan.kept_keys.tolist()
                if fidelity_sampled(e * plan.batches_per_epoch + b, codec.fidelity_rate)
            ]
            assert fid is not None
            assert 0 < len(sampled) <= plan.num_kept
            assert fid.rows == sum(sampled)
            assert fid.temperature == codec.temperature
    assert verify_store(tmp_path / "s.zarr").ok


def test_missing_encoded_chunk_reads_as_damage(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=4, batch_size=2, epochs=2)
    codec = CodecConfig(name="quantized", params={"bits": 4})
    with make_store(tmp_path / "s.zarr", plan=plan, num_classes=5, codec=codec) as writer:
        fill(writer)
    (tmp_path / "s.zarr" / "pool" / "logits" / "c" / "1" / "0" / "0").unlink()
    with open_store(tmp_path / "s.zarr") as store, pytest.raises(StoreDamagedError, match="missing"):
        store.logits_at(1)
    report = verify_store(tmp_path / "s.zarr")
    assert not report.ok
    assert any("chunk missing" in p.message for p in report.problems)


def test_codec_that_does_not_fit_the_classes_writes_nothing(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=4, batch_size=2, epochs=2)
    with pytest.raises(ConfigError, match=r"params.k must be an integer in \[1, 4\]"):
        make_store(
            tmp_path / "s.zarr", plan=plan, num_classes=5, codec=CodecConfig(name="topk", params={"k": 5})
        )
    assert list(tmp_path.iterdir()) == []
