"""Which peer wrote a label directory, from its file names and sidecars alone (no torch, no pickles).

``import --from X`` trusts the user's X to say how batches were composed; importing one peer's
directory as another's pairs logits with the wrong images (an LPLD directory read as SRe2L's
replays the seed-42 sampler instead of reading its sampler file). :func:`check_layout` refuses a
directory whose layout evidence names another peer, and names the ``--from`` that fits. The
records themselves are checked by the converters (a G-VBSM record has 7 items, SRe2L's 6).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

from lpldstore.errors import InteropError

__all__ = ["LAYOUT_NAMES", "Evidence", "check_layout", "layout_evidence"]

#: The peers behind each ``--from`` name, for messages.
LAYOUT_NAMES = {
    "sre2l": "SRe2L / CDA",
    "lpld": "LPLD",
    "lpqld": "LPQLD",
    "gvbsm": "G-VBSM",
    "hald": "HALD",
    "fkd": "FKD",
}

_EPOCH_DIR = re.compile(r"epoch_\d+")
_EPOCH_FILE = re.compile(r"epoch_\d+\.tar")
_BATCH_FILE = re.compile(r"batch_\d+\.tar")
# Enough entries to tell the layouts apart; FKD class folders and LPQLD's flat files run to
# hundreds of thousands, which need not all be listed.
_SCAN_LIMIT = 4096


@dataclasses.dataclass(frozen=True)
class Evidence:
    """The layouts a directory's files fit (most specific first) and why."""

    layouts: tuple[str, ...]
    reason: str


def layout_evidence(src: Path) -> Evidence | None:
    """What the names in ``src`` say about its layout; None when they say nothing (or it is no directory)."""
    if not src.is_dir():
        return None
    if (src / "zarr.json").is_file():
        raise InteropError(
            f"Expected a peer label directory at {src}. Got a Zarr store (zarr.json): an lpldstore store needs no "
            "import; open it with lpldstore.open_store or `lpldstore info`."
        )
    names = [p.name for p in itertools.islice(src.iterdir(), _SCAN_LIMIT)]
    if "sampler_indices_epoch.json" in names:
        return Evidence(("lpld",), "it holds sampler_indices_epoch.json, LPLD's list of each epoch's batches")
    if "sampler_indices_batch.json" in names or any(_BATCH_FILE.fullmatch(n) for n in names):
        return Evidence(("lpqld",), "it holds batch_<g>.tar files at its top level (LPQLD's flat layout)")
    if "sampler_indices_dict.pt" in names or any(_EPOCH_FILE.fullmatch(n) for n in names):
        return Evidence(("hald",), "it holds epoch_<e>.tar files (HALD's one file per epoch)")
    if any(_EPOCH_DIR.fullmatch(n) and (src / n).is_dir() for n in names):
        return Evidence(
            ("sre2l", "lpld", "gvbsm"),
            "it holds epoch_<e>/batch_<b>.tar folders and no sampler file",
        )
    for name in names[:8]:
        folder = src / name
        if folder.is_dir() and any(
            f.suffix == ".tar" for f in itertools.islice(folder.iterdir(), 16) if f.is_file()
        ):
            return Evidence(("fkd",), "it holds per-class folders of per-image .tar files (FKD's layout)")
    return None


def check_layout(layout: str, src: Path) -> None:
    """Raise :class:`InteropError` when ``src``'s files say it was written by a peer other than ``layout``."""
    evidence = layout_evidence(src)
    if evidence is None or layout in evidence.layouts:
        return
    best = evidence.layouts[0]
    others = f" (or {', '.join(evidence.layouts[1:])})" if len(evidence.layouts) > 1 else ""
    raise InteropError(
        f"Expected a {LAYOUT_NAMES.get(layout, layout)} label directory for --from {layout}. Got {src}, which looks "
        f"like a {LAYOUT_NAMES[best]} one: {evidence.reason}. Import it with --from {best}{others}; reading it "
        f"as {layout} would pair the logits with the wrong images."
    )
