"""The docs stay in step with the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

from test_cli_bad_inputs import CASES

ROOT = Path(__file__).resolve().parents[1]


def test_the_catalogue_lists_every_case() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.MULTILINE))
    assert listed == {case for case, _, _ in CASES}


def test_docs_link_only_to_files_in_the_repository() -> None:
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert missing == []
