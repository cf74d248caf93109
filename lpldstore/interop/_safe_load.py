"""Loading peer ``torch.save`` pickles without ever running code from them, within bounds.

Every peer file goes through :func:`safe_torch_load`:

1. the file is opened without following links (``O_NOFOLLOW``, non-blocking) and must be a regular
   file, so a link to ``/dev/zero`` or a FIFO in a peer directory is refused, not read forever;
2. it must be a current ``torch.save`` archive (a zip) whose members are all *stored* and whose
   sizes add up to the file: a deflated member could inflate to any size before torch checks
   anything, and the legacy (pre-1.6) format allocates storages of whatever size it declares;
3. ``torch.load(weights_only=True)``, whose unpickler only builds tensors and plain containers,
   plus exactly the four NumPy globals that the peer files need (NumPy scalars in SRe2L-family
   CutMix boxes, NumPy arrays in FKD files); any other global, such as a class whose
   ``__reduce__`` would run a command, is refused before anything is called;
4. the loaded object is walked once, within a budget (:data:`MAX_NODES` visits, depth
   :data:`MAX_DEPTH`), before any parser looks at it: nested lists that share references (a few KB
   of pickle that expand to billions of elements when traversed) are refused, and so are tensors
   that claim more elements than their storage holds (zero strides) or, all together, far more
   bytes than the file.
"""

from __future__ import annotations

import os
import pickle
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpldstore.errors import InteropError, UnsafePickleError

__all__ = ["ALLOWED_NUMPY_GLOBALS", "MAX_DEPTH", "MAX_NODES", "check_structure", "safe_torch_load"]

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

#: Containers and values visited when walking a loaded object (paths, not distinct objects: a
#: list referenced twice is visited twice). The largest peer file, a HALD epoch of ImageNet-1K
#: (10,000 batches of 6 items), is about 70,000.
MAX_NODES = 1_000_000
MAX_DEPTH = 64
# Tensors and arrays may hold, all together, at most this many bytes beyond 4x the file's size
# (views of one storage count once per view).
_SLACK_BYTES = 64 << 20
_LEAVES = (int, float, bool, complex, str, bytes, type(None), np.generic, torch.dtype, torch.device)


def _open_regular(path: Path) -> Any:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        reason = "it is a symbolic link" if os.path.islink(path) else os.strerror(exc.errno or 0)
        raise InteropError(
            f"{os.fspath(path)}: not read ({reason}); peer files must be regular files."
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InteropError(f"{os.fspath(path)}: not a regular file (a FIFO, device or socket); not read.")
    return os.fdopen(fd, "rb")


def _check_archive(f: Any, where: str) -> int:
    """Refuse anything but a torch.save zip whose members are stored; returns the file size."""
    size = os.fstat(f.fileno()).st_size
    try:
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise InteropError(
            f"{where}: expected a torch.save file (a zip archive, torch >= 1.6). Got another format; the legacy "
            "torch.save format is not read, because its storages are allocated at whatever size it declares. "
            "Re-save the file with a current torch."
        ) from None
    total = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise InteropError(
                f"{where}: archive member {info.filename!r} is compressed ({info.compress_size:,} bytes for "
                f"{info.file_size:,}); torch.save stores its members, and a compressed one could inflate to any "
                "size. Refused before loading."
            )
        total += info.file_size
    if total > size:
        raise InteropError(f"{where}: the archive's members claim {total:,} bytes in a {size:,}-byte file.")
    return size


def check_structure(obj: Any, where: str, file_bytes: int) -> None:
    """Walk a loaded peer object within budget; refuse shared-reference blow-ups and forged tensors."""
    budget = MAX_NODES
    data_bytes = 0
    limit = 4 * file_bytes + _SLACK_BYTES
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise InteropError(
                f"{where}: the record has more than {MAX_NODES:,} nested items when traversed (lists that share "
                "references expand like this); no peer layout does. Refused before it is read."
            )
        if depth > MAX_DEPTH:
            raise InteropError(f"{where}: the record nests deeper than {MAX_DEPTH} levels; refused.")
        if isinstance(item, torch.Tensor):
            nbytes = item.numel() * item.element_size()
            if item.layout != torch.strided or nbytes > item.untyped_storage().nbytes():
                raise InteropError(
                    f"{where}: a tensor of shape {tuple(item.shape)} claims more elements than its storage holds "
                    "(overlapping or zero strides); refused."
                )
            data_bytes += nbytes
        elif isinstance(item, np.ndarray):
            data_bytes += item.nbytes
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            stack.extend((child, depth + 1) for pair in item.items() for child in pair)
        elif not isinstance(item, _LEAVES):
            raise InteropError(f"{where}: unexpected object of type {type(item).__name__} in the record.")
        if data_bytes > limit:
            raise InteropError(
                f"{where}: the record's tensors add up to more than {limit:,} bytes from a {file_bytes:,}-byte file; "
                "refused."
            )


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """Unpickle a peer file with ``weights_only=True`` and the NumPy allow-list; tensors on the CPU.

    Raises :class:`~lpldstore.errors.UnsafePickleError` when the file names any other global
    (nothing of it is run) and :class:`~lpldstore.errors.InteropError` when it is not a readable,
    bounded ``torch.save`` file (see the module docstring).
    """
    where = os.fspath(path)
    with _open_regular(Path(path)) as f:
        size = _check_archive(f, where)
        f.seek(0)
        try:
            with torch.serialization.safe_globals(list(ALLOWED_NUMPY_GLOBALS)):
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafePickleError(
                f"{where}: refused to unpickle. Expected only tensors, plain containers and NumPy "
                f"scalars/arrays; the file asks for more ({_first_line(exc)}). Nothing from it was run. "
                "Do not import label files from an untrusted source."
            ) from None
        except (
            RuntimeError,
            EOFError,
            OSError,
            zipfile.BadZipFile,
            ValueError,
            MemoryError,
            RecursionError,
        ) as exc:
            raise InteropError(
                f"{where}: expected a torch.save file. Got an unreadable file instead ({_first_line(exc)})."
            ) from None
    check_structure(obj, where, size)
    return obj


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # torch puts the refused global on an inner line ("Unsupported global: ...").
    telling = [line for line in lines if "global" in line.lower() or "can only build" in line.lower()]
    return (telling or lines or [type(exc).__name__])[0][:300]
