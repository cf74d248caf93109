"""Exact byte size of a SRe2L/LPLD per-batch label file, computed without importing torch.

The peers write ``epoch_<e>/batch_<b>.tar`` with ``torch.save`` of the six-item list
``[coords, flip, mix_index, mix_lam, mix_bbox, logits]``. Importing torch only to size such a file
costs seconds, so this module rebuilds what ``torch.save`` (torch 2.14, ``torch/serialization.py``
``_save`` + ``caffe2/serialize/inline_container.cc`` + PyTorch's miniz 3.0.2) writes:

* ``data.pkl``: the protocol-2 pickle of the list. It is produced here by the pure-Python pickler
  from stand-ins that pickle to the same opcodes as the tensors (``torch._utils._rebuild_tensor_v2``
  over a persistent-id storage tuple), so its length is exact rather than modelled.
* the zip framing: every record is stored uncompressed under ``<archive>/``, where ``<archive>``
  is the file name's stem; its local header carries a ``FB`` extra field padding the data to a
  64-byte boundary, and a 16-byte data descriptor follows the data. The writer opens the archive
  with ``MZ_ZIP_FLAG_WRITE_ZIP64``, so the zip64 end-of-central-directory record and locator are
  always written; per-record zip64 extras (and 24-byte descriptors) appear only for a record of
  4 GiB or more or one starting past 4 GiB.

Self-contained on purpose (standard library and NumPy only, no other lpldstore module): it must
never import torch, not even lazily.
"""

from __future__ import annotations

import io
import pickle
import sys
from collections import OrderedDict
from typing import Any, ClassVar

import numpy as np

__all__ = ["torch_save_size"]

# Records torch.save writes besides data.pkl and the storages, with their contents' lengths.
_FORMAT_VERSION = b"1"  # _save's ".format_version"
_STORAGE_ALIGNMENT = b"64"  # torch.utils.serialization.config.save.storage_alignment default
_BYTEORDER = sys.byteorder.encode()  # _save writes sys.byteorder
_VERSION = b"3\n"  # "version", written by the stream writer when the archive is closed
_SERIALIZATION_ID_BYTES = 40  # two zero-padded 20-digit uint64 numbers

_ALIGNMENT = 64  # data of every record starts on this boundary
_LOCAL_HEADER = 30
_PADDING_FIELD_HEADER = 4  # "FB" + 16-bit length: always present, even for zero padding
_ZIP64_FIELD_HEADER = 4
_DESCRIPTOR = 16
_DESCRIPTOR_ZIP64 = 24
_CENTRAL_HEADER = 46
_TRAILER = 56 + 20 + 22  # zip64 end of central directory, its locator, end of central directory
_U32_MAX = 0xFFFFFFFF


class _Global:
    """A module-level name that the pickle refers to, written by name so nothing is imported."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, *args: Any) -> Any:
        # pickle wants a reduce function to be callable; this one is only ever written by name.
        raise TypeError(f"{self.module}.{self.name} is a stand-in for pickling and cannot be called")


# One object per name, as in torch: pickle's memo then reuses the first GLOBAL like torch's does.
_REBUILD_TENSOR_V2 = _Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_CLASS = {
    "float32": _Global("torch", "FloatStorage"),
    "bool": _Global("torch", "BoolStorage"),
    "int64": _Global("torch", "LongStorage"),
    "float16": _Global("torch", "HalfStorage"),
}
_ITEM_BYTES = {"float32": 4, "bool": 1, "int64": 8, "float16": 2}


class _Storage:
    """Stands for a tensor's storage, which torch.save pickles as a persistent id."""

    def __init__(self, dtype: str, numel: int) -> None:
        self.dtype = dtype
        self.numel = numel


class _Tensor:
    """A contiguous CPU tensor; reduces exactly as ``torch.Tensor.__reduce_ex__`` does for one."""

    def __init__(self, dtype: str, shape: tuple[int, ...]) -> None:
        self.storage = _Storage(dtype, _prod(shape))
        self.shape = shape

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        strides = tuple(_prod(self.shape[i + 1 :]) for i in range(len(self.shape)))
        # (storage, storage_offset, size, stride, requires_grad, backward_hooks)
        return (_REBUILD_TENSOR_V2, (self.storage, 0, self.shape, strides, False, OrderedDict()))


def _prod(dims: tuple[int, ...]) -> int:
    out = 1
    for dim in dims:
        out *= dim
    return out


def _save_global(pickler: _Pickler, obj: _Global) -> None:
    # pickle._Pickler.save_global for protocol < 3 with the import check left out.
    pickler.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
    pickler.memoize(obj)


class _Pickler(pickle._Pickler):
    """The pickler of torch.save's ``_save``, run on stand-ins; records the storages it meets."""

    dispatch: ClassVar[dict[type, Any]] = {**pickle._Pickler.dispatch, _Global: _save_global}
    write: Any  # set by pickle._Pickler.__init__; undeclared in typeshed
    memoize: Any

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=2)  # torch.serialization.DEFAULT_PROTOCOL
        self.storages: list[_Storage] = []

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, _Storage):
            return None
        key = str(len(self.storages))  # torch numbers storages in order of first appearance
        self.storages.append(obj)
        return ("storage", _STORAGE_CLASS[obj.dtype], key, "cpu", obj.numel)


def _record(n: int, num_classes: int, mix: bool) -> list[Any]:
    coords = _Tensor("float32", (n, 4))
    flip = _Tensor("bool", (n,))
    logits = _Tensor("float16", (n, num_classes))
    if not mix:
        return [coords, flip, None, None, None, logits]
    # Real NumPy scalars, so their pickle is whatever the installed NumPy writes: with NumPy >= 2
    # (2.4 here) the global is ``numpy._core.multiarray.scalar``; files written under NumPy 1.x
    # name ``numpy.core.multiarray.scalar`` and are one byte shorter. Four distinct objects, as in
    # the peers (one object repeated would be memoized). The box is sized as (1, 2, 3, 4): pickle
    # writes each value's 8 bytes as latin-1 text in UTF-8, so every byte >= 0x80 of a real box
    # (a coordinate of 128..255, say) makes the file one byte longer.
    bbox = [np.int64(v) for v in (1, 2, 3, 4)]
    return [coords, flip, _Tensor("int64", (n,)), 0.5, bbox, logits]


def _archive_name(file_stem: str) -> str:
    if not file_stem or "/" in file_stem or "\\" in file_stem:
        raise ValueError(
            f"file_stem must be a bare file name without directories, got {file_stem!r}; pass e.g. 'batch_12'"
        )
    if not file_stem.isascii():
        # torch.save hands non-ASCII paths to Python's open(); the writer then names the folder so.
        return "archive"
    # The writer's basename() cuts at the last dot of "<stem>.tar", which leaves the stem.
    return file_stem


def torch_save_size(n: int, num_classes: int, mix: bool, file_stem: str) -> int:
    """Bytes of ``torch.save(record, f"{file_stem}.tar")`` for one peer batch file, exactly.

    ``record`` is the SRe2L/LPLD relabel list for a batch of ``n`` images over ``num_classes``
    classes: float32 coords (n, 4), bool flips (n,), then with ``mix`` an int64 mix index (n,), a
    float lambda and four NumPy int64 box values (else three ``None``), and float16 logits
    (n, num_classes). The name matters because the zip folder inside is named after the stem.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (images in the batch) must be a positive int, got {n!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    archive = _archive_name(file_stem)

    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    pickler.dump(_record(n, num_classes, mix))
    records: list[tuple[str, int]] = [
        ("data.pkl", len(buffer.getvalue())),
        (".format_version", len(_FORMAT_VERSION)),
        (".storage_alignment", len(_STORAGE_ALIGNMENT)),
        ("byteorder", len(_BYTEORDER)),
    ]
    records += [(f"data/{i}", s.numel * _ITEM_BYTES[s.dtype]) for i, s in enumerate(pickler.storages)]
    records += [("version", len(_VERSION)), (".data/serialization_id", _SERIALIZATION_ID_BYTES)]
    return _zip_size(archive, records)


def _zip_size(archive: str, records: list[tuple[str, int]]) -> int:
    cursor = 0
    central = 0
    for name, size in records:
        name_bytes = len(f"{archive}/{name}".encode())
        zip64_extra = 0
        if size >= _U32_MAX or cursor >= _U32_MAX:
            zip64_extra = _ZIP64_FIELD_HEADER + (16 if size >= _U32_MAX else 0)
            zip64_extra += 8 if cursor >= _U32_MAX else 0
        start = cursor + _LOCAL_HEADER + name_bytes + zip64_extra + _PADDING_FIELD_HEADER
        data_start = start + (-start) % _ALIGNMENT
        cursor = data_start + size + (_DESCRIPTOR_ZIP64 if zip64_extra else _DESCRIPTOR)
        # The central entry repeats the name and the zip64 field, not the padding.
        central += _CENTRAL_HEADER + name_bytes + zip64_extra
    return cursor + central + _TRAILER
