"""The layers of ``lpldstore`` (docs/architecture.md): what each may import, and a torch-free core.

The import rules are checked on the source (every ``import`` statement, also inside functions);
the torch-free promise is checked by running the store commands in a fresh interpreter and looking
at ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lpldstore import Layout, PruningPlan
from lpldstore.testing import fill, make_store

PACKAGE = Path(__file__).resolve().parents[1] / "lpldstore"

# Layer -> the lpldstore layers it may import (itself included). Module files at the top level
# are layers of their own; ``__init__`` re-exports everything and is checked by the subprocess test.
ALLOWED: dict[str, set[str]] = {
    "errors": {"errors"},
    "_version": {"_version"},
    "_lazy": {"_lazy", "errors"},
    "format": {"format", "errors"},
    "storage": {"storage", "format", "errors", "_version"},
    "tools": {"tools", "storage", "format", "errors"},
    "augment": {"augment", "format", "errors"},
    "loader": {"loader", "augment", "storage", "format", "errors"},
    "interop": {"interop", "tools", "storage", "format", "errors", "_lazy"},
    "cli": {"cli", "interop", "tools", "storage", "format", "errors", "_version"},
    "testing": {"testing", "storage", "format", "errors"},
    "__main__": {"cli"},
}
TORCH_LAYERS = {"augment", "loader", "interop"}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "lpldstore":  # from lpldstore import x: x is a layer or a name
                names += [f"lpldstore.{alias.name}" for alias in node.names]
    return names


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_belongs_to_a_known_layer() -> None:
    layers = {_layer(p) for p in _modules()}
    assert layers <= set(ALLOWED), f"modules outside the documented layers: {sorted(layers - set(ALLOWED))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    layer = _layer(path)
    for name in _imports(path):
        top = name.split(".")[0]
        assert top != "lpld_pipeline", f"{path.name}: lpldstore never imports lpld_pipeline ({name})"
        if top in ("torch", "torchvision"):
            assert layer in TORCH_LAYERS, f"{path.name} ({layer}) imports {name}; only {TORCH_LAYERS} may"
        if top == "lpldstore" and name != "lpldstore":
            target = name.split(".")[1]
            if target in ALLOWED or target in ("_version", "_lazy"):
                assert target in ALLOWED[layer], f"{path.name} ({layer}) may not import {name}"


def test_the_module_rule_check_would_catch_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lpld_pipeline.teacher import Teacher\n    import torch\n")
    assert _imports(bad) == ["lpld_pipeline.teacher", "torch"]


_READ_EVERYTHING = r"""
import json, sys
from pathlib import Path

import lpldstore as ls
from lpldstore.cli import main

store, work = Path(sys.argv[1]), Path(sys.argv[2])
with ls.open_store(store) as s:
    s.metadata()
    s.entry(*s.keys[0].tolist())
    s.images()
    s.fidelity()
    ls.store_info(s)
report = ls.verify_store(store)
assert report.ok, report.problems
ls.store_card(store)
ls.prune(store, work / "pruned.zarr", ratio=4)
ls.recode(store, work / "q4.zarr", codec=ls.CodecConfig(name="quantized", params={"bits": 4}))
ls.pack_store(store, work / "s.zip")
ls.unpack_store(work / "s.zip", work / "unpacked.zarr")
with ls.open_store(work / "s.zip") as z:
    z.entry(*z.keys[0].tolist())
for argv in (["info", str(store)], ["info", "--json", str(store)], ["verify", str(store)], ["card", str(store)]):
    assert main(argv) == 0, argv
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))))
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; fails the test unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def test_reading_and_the_store_tools_never_import_torch(tmp_path: Path) -> None:
    plan = PruningPlan(num_images=24, batch_size=4, epochs=4, ratio=2, strategy="prefix")
    with make_store(tmp_path / "s.zarr", plan=plan, layout=Layout(block_entries=2)) as writer:
        fill(writer)
    work = tmp_path / "work"
    work.mkdir()
    done = _python(_READ_EVERYTHING, str(tmp_path / "s.zarr"), str(work))
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_torch_facing_names_load_on_first_use() -> None:
    code = (
        "import sys, lpldstore as ls\n"
        "assert 'torch' not in sys.modules\n"
        "ls.PoolLoader, ls.apply_params\n"
        "assert 'torch' in sys.modules\n"
        "assert set(ls.__all__) <= set(dir(ls))\n"
    )
    _python(code)


def test_a_missing_torch_names_the_extra_to_install() -> None:
    # A finder that refuses torch stands in for an environment without it.
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import lpldstore as ls\n"
        "try:\n"
        "    ls.PoolLoader\n"
        "except ls.MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    done = _python(code)
    assert "lpldstore.PoolLoader needs torch" in done.stdout
    assert "pip install 'lpldstore[torch]'" in done.stdout


def test_a_codec_is_built_once_per_store_handle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lpldstore import CodecConfig, PoolLoader, open_store

    builds: list[str] = []
    original = CodecConfig.codec

    def counting(self: CodecConfig, num_classes: int) -> object:
        builds.append(self.name)
        return original(self, num_classes)

    monkeypatch.setattr(CodecConfig, "codec", counting)
    plan = PruningPlan(num_images=8, epochs=3, batch_size=4, strategy="prefix", ratio=1)
    path = tmp_path / "s.zarr"
    with make_store(path, plan=plan, codec=CodecConfig(name="quantized", params={"bits": 4})) as writer:
        fill(writer)
    created, builds[:] = len(builds), []
    with open_store(path) as store:
        store.entry(0, 0)
    opened, builds[:] = len(builds), []
    loader = PoolLoader(path, policy="sequential")
    for _ in range(2):
        for _batch in loader:
            pass
    loader.close()
    # A small constant per store handle, never one per entry or per epoch (the issue counted 12 to
    # create, 5 per open_store and 10 per loader epoch): creating builds the records it writes and
    # the handle it reopens; the loader its metadata read and its replaying handle.
    assert created <= 3
    assert opened == 1
    assert len(builds) <= 2


def test_benchmarks_that_import_each_other_run_as_documented_scripts() -> None:
    # `python benchmarks/x.py` puts benchmarks/ on sys.path, not the repository root.
    bootstrap = "sys.path.insert(0, str(Path(__file__).resolve().parents[1]))"
    needing = [
        p.name
        for p in sorted((PACKAGE.parent / "benchmarks").glob("*.py"))
        if "from benchmarks" in p.read_text() or "import benchmarks" in p.read_text()
    ]
    assert needing, "the check would pass vacuously"
    assert [n for n in needing if bootstrap not in (PACKAGE.parent / "benchmarks" / n).read_text()] == []
