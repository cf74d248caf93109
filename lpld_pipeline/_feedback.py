"""One-line notes for the person at the terminal: stage headers, "resuming at ..." lines.

They go to stderr (stdout carries each command's result) from rank 0 only, so a torchrun job
says each thing once. Progress bars are tqdm's, also on stderr.
"""

from __future__ import annotations

import sys

from lpld_pipeline import _dist

__all__ = ["note"]


def note(message: str) -> None:
    """Print ``message`` on stderr (rank 0 only), flushed so that it comes before any bar."""
    if _dist.rank_and_world()[0] == 0:
        print(message, file=sys.stderr, flush=True)
