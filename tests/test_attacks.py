"""The attack suite of ``benchmarks/attacks.py`` as tests: no attack may run code, hang, crash or pass.

Every case of the catalogue runs here against its first victim (the default run); with
``LPLD_ATTACKS=full`` every case also runs against every victim, as the benchmark does. Each run is a forked
child under a memory limit and a timeout (``benchmarks.attacks.run_one``); HTTP read timeouts are
cut to 2 s so that the stalled-server case takes seconds (the benchmark uses the 30 s default).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load() -> ModuleType:
    # The catalogue lives with the benchmark (which writes the published figures); load it by path.
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "attacks.py"
    spec = importlib.util.spec_from_file_location("lpld_attacks", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


attacks = _load()
MEMORY = 1536 << 20
ACCEPTABLE = {"refused", "correct"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with attacks.prepared(tmp_path_factory.mktemp("attacks")) as prepared:
        yield prepared


def _check(runs: list[dict[str, Any]]) -> None:
    bad = [r for r in runs if not r.get("limit") and r["outcome"] not in ACCEPTABLE]
    assert not bad, [
        {k: r.get(k) for k in ("case", "victim", "outcome", "message", "traceback")} for r in bad
    ]


@pytest.mark.parametrize("case", attacks.CASES, ids=[c.name for c in attacks.CASES])
def test_an_attack_is_refused_or_harmless(case: Any, kit: Any) -> None:
    first = dataclasses.replace(case, victims=case.victims[:1], limits=())
    _check(attacks.run_case(first, kit, memory=MEMORY, http_timeout=2.0))


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("LPLD_ATTACKS") != "full", reason="LPLD_ATTACKS=full (benchmarks/attacks.py runs it)"
)
def test_every_attack_against_every_victim(kit: Any) -> None:
    runs = [r for case in attacks.CASES for r in attacks.run_case(case, kit, memory=MEMORY, http_timeout=2.0)]
    _check(runs)
    summary = attacks.summarize(runs)
    assert (
        summary["code execution"] == summary["hang"] == summary["silently wrong"] == summary["crashed"] == 0
    )
    # The documented limit: a bound store stripped to look like format 2 reads as one (no digests to
    # check) unless the reader requires a bound store.
    assert {(r["victim"], r["outcome"]) for r in runs if r.get("limit")} == {
        ("read", "silently wrong"),
        ("verify", "silently wrong"),
    }


def test_refusals_never_quote_what_they_read(kit: Any) -> None:
    # A chunk linked to a secret file: the refusal names the link, never its contents.
    case = next(c for c in attacks.CASES if c.name == "logits chunk a link to a secret file")
    runs = attacks.run_case(case, kit, memory=MEMORY)
    assert {r["outcome"] for r in runs} == {"refused"}
    assert all("symbolic link" in r["message"] for r in runs if r["victim"] != "verify")
    assert not any(attacks.SECRET.decode().strip() in r["message"] for r in runs)
