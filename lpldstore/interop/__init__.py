"""Import and export of the peer soft-label layouts (SRe2L, LPLD, LPQLD, G-VBSM, HALD, FKD).

One module per layout (``sre2l``, ``lpld``, ``lpqld``, ``gvbsm``, ``hald``, ``fkd``); every peer
pickle is read by :func:`safe_torch_load` and nothing else. See ``docs/interop.md``. The
converters need torch (the peers' files are torch pickles), so the names below are imported on
first use; :mod:`lpldstore.interop.layouts` lists the layouts, :mod:`lpldstore.interop.detect`
tells them apart by their file names and :mod:`lpldstore.interop.sidecar` reads and writes the
export sidecar, all without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lpldstore._lazy import lazy_attributes
from lpldstore.interop.detect import check_layout, layout_evidence
from lpldstore.interop.layouts import EXPORT_LAYOUTS, FKD_RULES, IMPORT_LAYOUTS
from lpldstore.interop.sidecar import ExportRecord, read_sidecar, sidecar_path

if TYPE_CHECKING:
    from lpldstore.interop._common import FILL_LOGIT, PIL_KERNEL, ImportOptions
    from lpldstore.interop._convert import (
        ExportReport,
        ImportReport,
        exact_lambdas,
        export_store,
        import_labels,
    )
    from lpldstore.interop._images import ImageSet, load_image_folder
    from lpldstore.interop._safe_load import ALLOWED_NUMPY_GLOBALS, safe_torch_load

_LAZY = {
    "FILL_LOGIT": "lpldstore.interop._common",
    "PIL_KERNEL": "lpldstore.interop._common",
    "ImportOptions": "lpldstore.interop._common",
    "ExportReport": "lpldstore.interop._convert",
    "ImportReport": "lpldstore.interop._convert",
    "exact_lambdas": "lpldstore.interop._convert",
    "export_store": "lpldstore.interop._convert",
    "import_labels": "lpldstore.interop._convert",
    "ImageSet": "lpldstore.interop._images",
    "load_image_folder": "lpldstore.interop._images",
    "ALLOWED_NUMPY_GLOBALS": "lpldstore.interop._safe_load",
    "safe_torch_load": "lpldstore.interop._safe_load",
}

__all__ = [
    "ALLOWED_NUMPY_GLOBALS",
    "EXPORT_LAYOUTS",
    "FILL_LOGIT",
    "FKD_RULES",
    "IMPORT_LAYOUTS",
    "PIL_KERNEL",
    "ExportRecord",
    "ExportReport",
    "ImageSet",
    "ImportOptions",
    "ImportReport",
    "check_layout",
    "exact_lambdas",
    "export_store",
    "import_labels",
    "layout_evidence",
    "load_image_folder",
    "read_sidecar",
    "safe_torch_load",
    "sidecar_path",
]


if not TYPE_CHECKING:  # type checkers see the imports above; a typo stays an error for them
    __getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
