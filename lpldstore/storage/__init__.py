"""The storage core: zarr reading and writing of the format, with the guard in front of every open.

Nothing here imports torch. ``writer`` creates and fills stores (``background``: the same from one
background thread, for a GPU loop), ``reader`` opens and reads them; both go through ``_open`` (a
directory, a zip or an fsspec URL as a zarr store) and ``_guard`` (raw metadata vetted before zarr
parses it), and read and write whole chunks in the calling thread where the store allows it
(``_chunkio``).
"""

from lpldstore.storage._open import StoreLike
from lpldstore.storage.background import BackgroundWriter
from lpldstore.storage.reader import Entry, EntryMetadata, LabelStore, open_store
from lpldstore.storage.writer import StoreWriter

__all__ = [
    "BackgroundWriter",
    "Entry",
    "EntryMetadata",
    "LabelStore",
    "StoreLike",
    "StoreWriter",
    "open_store",
]
