"""Import and export of the peer soft-label layouts (SRe2L, LPLD, LPQLD, G-VBSM, HALD, FKD).

One module per layout (``sre2l``, ``lpld``, ``lpqld``, ``gvbsm``, ``hald``, ``fkd``); every peer
pickle is read by :func:`safe_torch_load` and nothing else. See ``docs/interop.md``.
"""

from lpldstore.interop._common import FILL_LOGIT, PIL_KERNEL, ImportOptions
from lpldstore.interop._convert import (
    EXPORT_LAYOUTS,
    IMPORT_LAYOUTS,
    ImportReport,
    exact_lambdas,
    export_store,
    import_labels,
)
from lpldstore.interop._images import ImageSet, load_image_folder
from lpldstore.interop._safe_load import ALLOWED_NUMPY_GLOBALS, safe_torch_load

__all__ = [
    "ALLOWED_NUMPY_GLOBALS",
    "EXPORT_LAYOUTS",
    "FILL_LOGIT",
    "IMPORT_LAYOUTS",
    "PIL_KERNEL",
    "ImageSet",
    "ImportOptions",
    "ImportReport",
    "exact_lambdas",
    "export_store",
    "import_labels",
    "load_image_folder",
    "safe_torch_load",
]
