"""Loading peer ``torch.save`` pickles without ever running code from them.

Every peer file goes through :func:`safe_torch_load`: ``torch.load(weights_only=True)``, whose
unpickler only builds tensors and plain containers, plus exactly the four NumPy globals that the
peer files need (NumPy scalars in SRe2L-family CutMix boxes, NumPy arrays in FKD files). Any other
global, such as a class whose ``__reduce__`` would run a command, is refused before anything is
called.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import numpy as np
import torch

from lpldstore.errors import InteropError, UnsafePickleError

__all__ = ["ALLOWED_NUMPY_GLOBALS", "safe_torch_load"]

_SCALAR = np._core.multiarray.scalar  # type: ignore[attr-defined]
_RECONSTRUCT = np._core.multiarray._reconstruct  # type: ignore[attr-defined]

#: The NumPy globals a peer file may name (the scalar and array constructors and the plain
#: number dtypes), the constructors under its NumPy 2 and NumPy 1 module path (files
#: written with NumPy 1 name ``numpy.core``). Nothing else beyond torch's weights-only set.
ALLOWED_NUMPY_GLOBALS: tuple[Any, ...] = (
    _SCALAR,
    (_SCALAR, "numpy.core.multiarray.scalar"),
    _RECONSTRUCT,
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    # Unpickling a dtype rebuilds its class: only these plain number types are accepted.
    np.dtypes.BoolDType,
    np.dtypes.UInt8DType,
    np.dtypes.Int16DType,
    np.dtypes.Int32DType,
    np.dtypes.Int64DType,
    np.dtypes.Float16DType,
    np.dtypes.Float32DType,
    np.dtypes.Float64DType,
)


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle a peer file with ``weights_only=True`` and the NumPy allow-list; tensors on the CPU.

    Raises :class:`~lpldstore.errors.UnsafePickleError` when the file names any other global
    (nothing of it is run) and :class:`~lpldstore.errors.InteropError` when it is not a readable
    ``torch.save`` file.
    """
    try:
        with torch.serialization.safe_globals(list(ALLOWED_NUMPY_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(
            f"{os.fspath(path)}: refused to unpickle. Expected only tensors, plain containers and NumPy "
            f"scalars/arrays; the file asks for more ({_first_line(exc)}). Nothing from it was run. "
            "Do not import label files from an untrusted source."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise InteropError(
            f"{os.fspath(path)}: expected a torch.save file. Got an unreadable file instead ({_first_line(exc)})."
        ) from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # torch puts the refused global on an inner line ("Unsupported global: ...").
    telling = [line for line in lines if "global" in line.lower() or "can only build" in line.lower()]
    return (telling or lines or [type(exc).__name__])[0][:300]
