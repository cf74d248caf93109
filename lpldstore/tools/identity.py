"""How one store names another: by name and digests, never by a local path.

Provenance is published with a store (``lpldstore card``, ``pack``), so it must not carry the
directories of the machine that made it. A derived store, an import and an export sidecar name
their source with :func:`store_identity`: the last component of its path or URL and the SHA-256
of its root records (which hold the SHA-256 of its images and labels).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from lpldstore.storage._open import StoreLike, is_url
from lpldstore.storage.reader import LabelStore

__all__ = ["public_name", "records_digest", "store_identity"]


def public_name(location: StoreLike) -> str:
    """The last component of a path or URL (no directories, host, user or query string)."""
    text = os.fspath(location)
    if is_url(text):
        text = urlsplit(text.rpartition("::")[2]).path
    return PurePosixPath(text.replace("\\", "/").rstrip("/")).name or "store"


def records_digest(store: LabelStore) -> str:
    """SHA-256 of the canonical JSON of a store's root records (sorted keys, no spaces)."""
    text = json.dumps(store.attrs.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def store_identity(store: LabelStore) -> dict[str, Any]:
    """``{"name", "format_version", "records_sha256"}`` of an open store.

    The images are named by ``dataset.images_sha256``, inside the records (and so inside their
    digest); a derived store copies them, so its own dataset record carries the same digest.
    """
    return {
        "name": public_name(store.where),
        "format_version": store.attrs.format_version,
        "records_sha256": records_digest(store),
    }
