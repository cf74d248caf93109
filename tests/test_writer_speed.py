"""The fast write path: whole chunks without zarr's event loop, sampled fidelity, the background writer."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from lpldstore import (
    BackgroundWriter,
    CodecConfig,
    Layout,
    PruningPlan,
    StoreWriter,
    ValidationError,
    open_store,
    verify_store,
)
from lpldstore.format.fidelity import DEFAULT_FIDELITY_RATE, fidelity_sampled
from lpldstore.format.records import CodecConfig as Codec
from lpldstore.format.schema import StoreAttrs
from lpldstore.storage import _chunkio
from lpldstore.storage._chunkio import ChunkIO
from lpldstore.testing import different_entries, fake_entry, fill, make_store

PLAN = PruningPlan(
    num_images=30, batch_size=4, epochs=5, ratio=1.2, strategy="random", seed=3, last_batch="pad"
)


def _chunk_files(store: Path) -> dict[str, bytes]:
    """Every chunk file of a store's pool and images (metadata documents left out: they hold times;
    digests too: they bind each entry to its own store's random identity)."""
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name != "zarr.json" and "pool/digest" not in str(p.relative_to(store))
    }


# -- ChunkIO: the bytes zarr itself would write ------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "layout"),
    [
        (CodecConfig(), Layout(block_entries=8)),
        (CodecConfig(name="quantized", params={"bits": 4}, fidelity_rate=1.0), Layout(block_entries=8)),
        (
            CodecConfig(name="topk", params={"k": 2, "tail": "MRS"}),
            Layout(block_entries=8, logits_shard_entries=8),
        ),
    ],
    ids=["float16", "quantized", "topk-sharded"],
)
def test_the_writers_chunk_path_writes_the_bytes_zarr_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codec: CodecConfig, layout: Layout
) -> None:
    # 25 entries in blocks of 8: the last block chunk sticks out of the arrays (an edge chunk).
    fast, slow = tmp_path / "fast.zarr", tmp_path / "slow.zarr"
    with make_store(fast, plan=PLAN, codec=codec, layout=layout, commit_every=3) as writer:
        assert writer._chunk_io["pool/committed"] is not None
        assert (writer._chunk_io["pool/logits"] is None) == (layout.logits_shard_entries is not None)
        fill(writer)
    monkeypatch.setattr(_chunkio.ChunkIO, "of", classmethod(lambda cls, array, write=False: None))
    with make_store(slow, plan=PLAN, codec=codec, layout=layout, commit_every=3) as writer:
        assert all(io is None for io in writer._chunk_io.values())
        fill(writer)
    assert PLAN.num_kept % layout.block_entries
    assert _chunk_files(fast) == _chunk_files(slow)
    assert different_entries(fast, slow) == []
    assert verify_store(fast).ok


def test_chunk_reads_match_zarr_and_missing_or_damaged_chunks_behave_as_zarrs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, compressors in [
        ("blosc", [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", blocksize=1 << 18), Crc32cCodec()]),
        ("zstd", [ZstdCodec(level=3), Crc32cCodec()]),
    ]:
        array = zarr.create_array(
            LocalStore(tmp_path / f"{name}.zarr"),
            shape=(10, 6, 5),
            chunks=(4, 6, 5),
            dtype="float16",
            fill_value=np.nan,
            compressors=compressors,
            config={"write_empty_chunks": True},
        )
        io = ChunkIO.of(array, write=True)
        assert io is not None
        data = rng.standard_normal((10, 6, 5)).astype(np.float16)
        io.write(0, data[0:4])
        io.write(2, data[8:10])  # the edge chunk: two rows inside the array
        assert np.array_equal(array[0:4], data[0:4])
        assert np.array_equal(array[8:10], data[8:10])
        assert np.array_equal(io.read(0), data[0:4])
        assert np.array_equal(io.read(2), data[8:10])
        assert np.isnan(io.read(1)).all()  # never written: the fill value, as zarr reads it
        assert io.read(1).shape == (4, 6, 5)
        chunk = tmp_path / f"{name}.zarr" / "c" / "0" / "0" / "0"
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        chunk.write_bytes(bytes(raw))
        with pytest.raises(ValueError, match="checksum"):
            io.read(0)
        with pytest.raises(ValueError, match="checksum"):
            array[0:4]
    sharded = zarr.create_array(
        LocalStore(tmp_path / "sharded.zarr"), shape=(8, 3), chunks=(1, 3), shards=(4, 3), dtype="float32"
    )
    assert ChunkIO.of(sharded) is None  # a shard holds several entries: zarr's own path
    split = zarr.create_array(
        LocalStore(tmp_path / "split.zarr"), shape=(8, 6), chunks=(1, 3), dtype="float32"
    )
    assert ChunkIO.of(split) is None  # a chunk must span every axis but the first


# -- sampled fidelity --------------------------------------------------------------------------------


def test_fidelity_sample_is_a_pure_even_choice_of_entries() -> None:
    assert fidelity_sampled(0, DEFAULT_FIDELITY_RATE)
    assert not any(fidelity_sampled(g, 0.0) for g in range(1000))
    assert all(fidelity_sampled(g, 1.0) for g in range(1000))
    for rate in (1 / 16, 0.1, 0.25, 0.5, 0.9):
        picked = np.array([fidelity_sampled(g, rate) for g in range(20_000)])
        assert picked[0]
        for start in (0, 17, 5000):
            counts = np.cumsum(picked[start:])
            expected = rate * np.arange(1, len(counts) + 1)
            assert np.abs(counts - expected).max() <= 4, (rate, start)
    assert [fidelity_sampled(g, 0.3) for g in range(50)] == [fidelity_sampled(g, 0.3) for g in range(50)]


def test_lossless_stores_measure_nothing_and_lossy_ones_their_recorded_sample(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=40, batch_size=4, epochs=8)
    with make_store(tmp_path / "f16.zarr", plan=plan) as writer:
        fill(writer)
    with open_store(tmp_path / "f16.zarr") as store:
        assert store.fidelity() is None
        assert np.isnan(np.asarray(store.array("pool/fidelity")[:])).all()
        # float16's record is the one format 2 always wrote: no rate key.
        assert "fidelity_rate" not in store.codec.to_dict()
    root = json.loads((tmp_path / "f16.zarr" / "zarr.json").read_text())
    assert "fidelity_rate" not in root["attributes"]["codec"]
    codec = CodecConfig(name="quantized", params={"bits": 6}, fidelity_rate=0.25)
    with make_store(tmp_path / "q.zarr", plan=plan, codec=codec) as writer:
        fill(writer)
    with open_store(tmp_path / "q.zarr") as store:
        assert store.codec.fidelity_rate == 0.25
        assert store.codec.to_dict()["fidelity_rate"] == 0.25
        sums = np.asarray(store.array("pool/fidelity")[:])
        measured = ~np.isnan(sums).any(axis=1)
        expected = [
            fidelity_sampled(e * plan.batches_per_epoch + b, 0.25) for e, b in plan.kept_keys.tolist()
        ]
        assert measured.tolist() == expected
        assert 0 < measured.sum() < plan.num_kept
        fid = store.fidelity()
        assert fid is not None
        assert fid.rows == 4 * int(measured.sum())


def test_the_rate_is_recorded_and_old_lossy_stores_read_as_every_entry() -> None:
    assert CodecConfig().fidelity_rate == DEFAULT_FIDELITY_RATE
    lossy = CodecConfig(name="topk", params={"k": 3, "tail": "MR"})
    assert lossy.to_dict()["fidelity_rate"] == DEFAULT_FIDELITY_RATE
    for config in (
        lossy,
        CodecConfig(fidelity_rate=0.5),
        CodecConfig(),
        CodecConfig(name="quantized", params={"bits": 2}, fidelity_rate=0.0),
    ):
        assert Codec.from_dict(config.to_dict()) == config
    assert "fidelity_rate" not in CodecConfig().to_dict()
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(Exception, match="fidelity_rate must be a number in"):
            CodecConfig(name="quantized", params={"bits": 4}, fidelity_rate=bad)  # type: ignore[arg-type]
    # A store written before the rate existed: its lossy writer measured every entry.
    with make_store_attrs(CodecConfig(name="quantized", params={"bits": 4})) as attrs:
        # A format-2 store (no record digests) whose codec record predates the key.
        legacy = {k: v for k, v in attrs.items() if k != "integrity"} | {"format_version": 2}
        legacy["codec"] = {k: v for k, v in legacy["codec"].items() if k != "fidelity_rate"}
        assert StoreAttrs.from_json(legacy, "old").codec.fidelity_rate == 1.0
        # ... while a config file without the key gets the default.
        assert Codec.from_dict(legacy["codec"]).fidelity_rate == DEFAULT_FIDELITY_RATE


class make_store_attrs:
    """The root attributes of a small store with ``codec``, as a context manager over a temp dir."""

    def __init__(self, codec: CodecConfig) -> None:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory()
        self.codec = codec

    def __enter__(self) -> dict[str, Any]:
        path = Path(self._tmp.name) / "s.zarr"
        make_store(path, plan=PruningPlan(num_images=4, batch_size=2, epochs=1), codec=self.codec).close()
        with open_store(path) as store:
            return store.attrs.to_json()

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()


# -- the background writer ---------------------------------------------------------------------------


def test_background_writer_writes_what_the_writer_writes(tmp_path: Path) -> None:
    direct, queued = tmp_path / "direct.zarr", tmp_path / "queued.zarr"
    with make_store(direct, plan=PLAN, layout=Layout(block_entries=8)) as writer:
        fill(writer)
    with BackgroundWriter(
        make_store(queued, plan=PLAN, layout=Layout(block_entries=8)), max_pending=2
    ) as writer:
        assert writer.plan == PLAN
        assert len(writer.todo()) == PLAN.num_kept
        attrs = writer.attrs
        for i, (epoch, batch) in enumerate(writer.todo()):
            entry = fake_entry(attrs.plan, attrs.dataset, attrs.relabel, epoch, batch)
            logits = entry.pop("logits")
            if i % 3 == 1:  # torch tensors too, copied to the host in the writer's thread
                logits = torch.from_numpy(logits)
            writer.write(epoch, batch, logits=logits, **entry)
            if i == 10:
                writer.flush()
                with open_store(queued) as store:
                    assert store.committed().sum() == 11
        assert writer.todo() == []
    assert different_entries(direct, queued) == []
    assert verify_store(queued).ok


def test_background_writer_copies_what_the_caller_may_reuse(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=8, batch_size=4, epochs=2)
    with make_store(tmp_path / "a.zarr", plan=plan) as writer:
        fill(writer)
    with BackgroundWriter(make_store(tmp_path / "b.zarr", plan=plan), max_pending=8) as writer:
        attrs = writer.attrs
        buffer = np.zeros((4, 5), dtype=np.float32)
        for epoch, batch in writer.todo():
            entry = fake_entry(attrs.plan, attrs.dataset, attrs.relabel, epoch, batch)
            buffer[:] = entry.pop("logits")
            writer.write(epoch, batch, logits=buffer, **entry)
        buffer[:] = 1e4  # after every write returned, before the thread wrote them
    assert different_entries(tmp_path / "a.zarr", tmp_path / "b.zarr") == []


def test_bfloat16_tensors_are_written_as_their_float32_values(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=4, batch_size=4, epochs=1)
    logits = torch.randn(4, 5).to(torch.bfloat16)
    with BackgroundWriter(make_store(tmp_path / "s.zarr", plan=plan)) as writer:
        attrs = writer.attrs
        entry = fake_entry(attrs.plan, attrs.dataset, attrs.relabel, 0, 0)
        entry.pop("logits")
        writer.write(0, 0, logits=logits, **entry)
    with open_store(tmp_path / "s.zarr") as store:
        assert np.array_equal(store.entry(0, 0).logits, logits.float().numpy().astype(np.float16))


def test_an_error_in_the_writers_thread_reaches_the_caller(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=20, batch_size=4, epochs=2)
    writer = BackgroundWriter(make_store(tmp_path / "s.zarr", plan=plan, layout=Layout(block_entries=2)))
    attrs = writer.attrs
    todo = writer.todo()
    for i, (epoch, batch) in enumerate(todo[:6]):
        entry = fake_entry(attrs.plan, attrs.dataset, attrs.relabel, epoch, batch)
        if i == 3:  # the fourth entry is bad: logits of the wrong shape
            entry["logits"] = entry["logits"][:, :2]
        writer.write(epoch, batch, **entry)
    with pytest.raises(ValidationError, match="expected logits of shape") as info:
        writer.flush()
    assert any(
        "background writer" in note and f"epoch={todo[3][0]}, batch={todo[3][1]}" in note
        for note in info.value.__notes__
    )
    with pytest.raises(ValidationError, match="expected logits of shape"):  # every later call says so
        writer.write(*todo[7], **fake_entry(attrs.plan, attrs.dataset, attrs.relabel, *todo[7]))
    with pytest.raises(ValidationError, match="expected logits of shape"):
        writer.close()
    # The three entries before the bad one are committed; the bad one and those after it are not.
    with StoreWriter.open(tmp_path / "s.zarr") as again:
        assert again.todo() == todo[3:]
    with pytest.raises(ValidationError, match="this writer is closed"):
        writer.write(*todo[3], **fake_entry(attrs.plan, attrs.dataset, attrs.relabel, *todo[3]))


def test_a_caller_exception_wins_and_keeps_the_writers_error_visible(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=8, batch_size=4, epochs=1)
    writer = BackgroundWriter(make_store(tmp_path / "s.zarr", plan=plan))
    attrs = writer.attrs
    entry = fake_entry(attrs.plan, attrs.dataset, attrs.relabel, 0, 0)
    entry["logits"] = entry["logits"][:1]

    def body() -> None:
        with writer:
            writer.write(0, 0, **entry)
            time.sleep(0.2)
            raise KeyError("the caller's own error")

    with pytest.raises(KeyError) as info:
        body()
    assert any("had also failed" in note for note in info.value.__notes__)


def test_background_writer_options_are_checked(tmp_path: Path) -> None:
    writer = make_store(tmp_path / "s.zarr", plan=PruningPlan(num_images=4, batch_size=2, epochs=1))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValidationError, match="max_pending must be a positive integer"):
            BackgroundWriter(writer, max_pending=bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="Expected a StoreWriter"):
        BackgroundWriter("s.zarr")  # type: ignore[arg-type]
    writer.close()


def test_a_killed_background_writer_leaves_only_committed_whole_entries(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=64, batch_size=4, epochs=6, ratio=1.5, strategy="random", seed=2)
    reference, store = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    with make_store(reference, plan=plan, layout=Layout(block_entries=8)) as writer:
        fill(writer)
    make_store(store, plan=plan, layout=Layout(block_entries=8)).close()
    cmd = [sys.executable, "-m", "lpldstore.testing", "fill", str(store), "--background", "--delay", "0.03"]
    cmd += ["--commit-every", "3"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        with open_store(store) as s:
            done = int(s.committed().sum())
        if done >= plan.num_kept // 3:
            break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the writer made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    with StoreWriter.open(store) as writer:
        left = len(writer.todo())
        assert 0 < left < plan.num_kept
        fill(writer)
    assert different_entries(store, reference) == []
    assert verify_store(store).ok


# -- reading: the quantized codes unpacked by byte pairs equal the documented bit layout ------------


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("classes", [1, 7, 10, 1000])
def test_quantized_decode_reads_the_documented_bit_layout(bits: int, classes: int) -> None:
    codec = CodecConfig(name="quantized", params={"bits": bits}).codec(classes)
    rng = np.random.default_rng(bits * 1000 + classes)
    stored = codec.encode((rng.standard_normal((9, classes)) * 5).astype(np.float32))
    # The layout (QuantizedCodec's docstring): code q of class c in bits c*bits .. c*bits+bits-1 of
    # the code bytes, least significant bit first; decoded offset + q * scale in float32.
    flat = np.unpackbits(stored[:, 8:], axis=1, bitorder="little")
    weights = 1 << np.arange(bits)
    codes = np.stack(
        [(flat[:, c * bits : (c + 1) * bits] * weights).sum(axis=1) for c in range(classes)], axis=1
    )
    head = np.ascontiguousarray(stored[:, :8]).view("<f4")
    expected = head[:, :1] + codes.astype(np.float32) * head[:, 1:2]
    assert np.array_equal(codec.decode(stored), expected)


def test_the_float16_finiteness_check_is_numpys() -> None:
    from lpldstore.format.codecs import all_finite as _all_finite

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    for value in [*every[:: 1 << 6].tolist(), np.inf, -np.inf, np.nan, 65504.0, -0.0]:
        one = np.array([[1.0, value]], dtype=np.float16)
        assert _all_finite(one) == bool(np.isfinite(one).all()), value
    with np.errstate(invalid="ignore"):
        assert _all_finite(every[np.isfinite(every)])
    assert not _all_finite(every)
    assert _all_finite(np.ones((2, 3), np.float32))
    assert not _all_finite(np.array([np.nan], np.float32))


# -- compressor generations ---------------------------------------------------------------------------


def test_a_store_mixing_compressor_generations_is_refused(tmp_path: Path) -> None:
    from lpldstore import FormatError
    from lpldstore.storage._arrays import compressors, expected_metadata

    path = tmp_path / "s.zarr"
    with make_store(path, plan=PruningPlan(num_images=8, batch_size=4, epochs=2)) as writer:
        fill(writer)
        attrs = writer.attrs
    # Written now: the current generation (blosc-lz4 small arrays), and it reads.
    assert type(compressors(attrs.arrays["pool/crop"], attrs)[0]).__name__ == "BloscCodec"
    with open_store(path) as store:
        assert store.entry_at(0).logits.shape == (4, 5)
    # One array's metadata from the generation before issue 16, the others current: refused.
    legacy = expected_metadata(attrs, "before-issue-16")["pool/crop"]
    root = json.loads((path / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"]["pool/crop"]["codecs"] = legacy["codecs"]
    (path / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(FormatError, match="does not have the metadata that format version 3 declares"):
        open_store(path)
