"""Property-based fuzzing of stores: whatever hypothesis does to a store's files, the reader and
``verify`` raise only lpldstore's documented errors (and ``verify`` raises nothing at all).

Cases per run: ``FUZZ_FACTOR`` times the profile's ``max_examples`` for each test (profiles in
``tests/conftest.py``: 12 by default, 200 with ``LPLD_HYPOTHESIS_PROFILE=thorough``).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lpldstore import Layout, LpldStoreError, PoolLoader, PruningPlan, open_store, verify_store
from lpldstore.testing import fill, make_store

FUZZ_FACTOR = 1
PLAN = PruningPlan(
    num_images=12, batch_size=4, epochs=3, ratio=1.5, strategy="random", seed=3, last_batch="pad"
)
CASES = FUZZ_FACTOR * settings().max_examples  # the loaded profile (tests/conftest.py)


@pytest.fixture(scope="module", params=[None, 4], ids=["chunked", "sharded"])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "t.zarr"
    with make_store(
        path, plan=PLAN, layout=Layout(block_entries=4, logits_shard_entries=request.param)
    ) as writer:
        fill(writer)
    return path


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)

MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("delete")),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
    st.tuples(st.just("json"), st.floats(0, 1, exclude_max=True), JSON_VALUES),
    st.tuples(st.just("json-drop"), st.floats(0, 1, exclude_max=True)),
)


def _json_slots(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    slots = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            slots += _json_slots(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            slots += _json_slots(value, (*path, i))
    return slots


def _mutate(file: Path, mutation: tuple[Any, ...]) -> None:
    kind = mutation[0]
    if kind == "delete":
        file.unlink()
        return
    data = bytearray(file.read_bytes())
    if kind in ("json", "json-drop"):
        try:
            doc = json.loads(data)
        except ValueError:
            return
        slots = _json_slots(doc)
        if not slots:
            return
        path = slots[math.floor(mutation[1] * len(slots))]
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if kind == "json":
            parent[path[-1]] = mutation[2]
        else:
            del parent[path[-1]]
        file.write_text(json.dumps(doc))
        return
    if kind == "flip" and data:
        data[math.floor(mutation[1] * len(data))] ^= mutation[2]
    elif kind == "truncate":
        del data[math.floor(mutation[1] * len(data)) :]
    elif kind == "garbage":
        data = bytearray(mutation[1])
    file.write_bytes(bytes(data))


def _exercise(path: Path) -> None:
    """Everything a user does with a store; only lpldstore errors may escape."""
    report = verify_store(path)  # never raises: damage is reported
    assert isinstance(report.ok, bool)
    try:
        with open_store(path) as store:
            store.committed()
            store.metadata()
            for pos in range(store.num_entries):
                with contextlib.suppress(LpldStoreError):
                    store.entry_at(pos)
            store.images()
    except LpldStoreError:
        pass
    try:
        loader = PoolLoader(path, policy="sequential", seed=0)
        for _ in loader:
            pass
    except LpldStoreError:
        pass


@settings(max_examples=CASES)
@given(picks=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), MUTATIONS), min_size=1, max_size=3))
def test_any_mutation_raises_only_documented_errors(
    template: Path, picks: list[tuple[float, tuple[Any, ...]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zarr"
        shutil.copytree(template, path)
        for where, mutation in picks:
            files = _files(path)
            if files:
                _mutate(files[math.floor(where * len(files))], mutation)
        _exercise(path)


@settings(max_examples=CASES)
@given(pick=st.floats(0, 1, exclude_max=True), mutation=MUTATIONS)
def test_any_mutation_of_metadata_raises_only_documented_errors(
    template: Path, pick: float, mutation: tuple[Any, ...]
) -> None:
    # Metadata files are few among the chunks; this test aims every mutation at one of them.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zarr"
        shutil.copytree(template, path)
        meta = [f for f in _files(path) if f.name == "zarr.json"]
        _mutate(meta[math.floor(pick * len(meta))], mutation)
        _exercise(path)
