"""Logit codecs: how one entry's (rows, classes) logits become stored bytes and back.

Each codec is a small frozen class registered by name in :data:`CODECS`,
with pure ``encode``/``decode`` functions and a stated per-element error bound. As in zarr, a codec
class parses and validates its own parameters (:meth:`Codec.parse_params`) and is built once per
store (:meth:`Codec.build`, held by ``StoreAttrs.logits_codec``). Every codec but ``float16`` stores fixed-length byte rows (a
``uint8`` array of shape ``(rows, row_bytes)``) whose layout is written out in
``docs/codecs.md``, so any NumPy reader can decode a store without this package. The first bytes of
every row are a float whose all-ones pattern is NaN: a missing chunk (filled with 0xFF) decodes to
NaN logits and reads as damage, as in format version 1.

Codecs
------
``float16``
    IEEE half, exact relative to a teacher that emits float16.
``quantized`` (``bits`` 2..8)
    Per-row affine quantization: offset and scale (float32) and ``bits``-bit codes, bit-packed, so
    4 bits take half the bytes of 8. Error at most half a step, ``(max - min) / (2**bits - 1) / 2``,
    except that the top code is reserved for the row's argmax (top-1 is always kept): another class
    within half a step of the maximum is coded one step lower, an error of at most one step.
``quantized_entropy`` (``bits`` 2..8)
    The same codes one per byte, left to zstd's entropy coder (the zarr compressor of the array):
    fewer bytes than packing when the codes' distribution is peaked, same error.
``topk`` (``k``, ``tail`` MR, MS or MRS)
    The ``k`` largest logits (float16) and their class ids (the smallest unsigned type that holds the
    class count), with LPQLD/FKD's tail rules on decoding: ``MR`` softmax over the top-k only (the
    tail decodes to :data:`MR_TAIL`, zero probability at any sane temperature); ``MS`` the top-k
    probabilities at the codec's temperature are stored and the rest of the mass is spread
    uniformly over the tail (decoded as ``T * log(p)``, which gives exactly those soft targets at
    temperature ``T``); ``MRS`` the tail is the row's minimum logit, stored per row.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self, get_args

import numpy as np
import numpy.typing as npt

from lpldstore.errors import ConfigError

__all__ = [
    "CODECS",
    "MR_TAIL",
    "Codec",
    "Float16Codec",
    "QuantizedCodec",
    "QuantizedEntropyCodec",
    "TopKCodec",
    "all_finite",
    "Tail",
]

Tail = Literal["MR", "MS", "MRS"]
# The decoded value of a logit that MR drops: exp(MR_TAIL / T) is exactly 0 in float32 for any
# temperature below 1e27, yet the value stays finite, so sums and casts never produce NaN.
MR_TAIL = float(np.float32(-1.0e30))  # exactly representable in float32
_F32 = np.float32
FloatArray = npt.NDArray[np.floating[Any]]


def _param_int(name: str, params: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = params.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(
            f"codec {name!r}: params.{key} must be an integer in [{lo}, {hi}]. Got {value!r} instead."
        )
    return value


def _check_keys(name: str, params: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"codec {name!r}: unknown params {unknown}; expected only {sorted(allowed)}.")


class Codec:
    """A logit codec for rows of ``num_classes`` logits. Subclasses are frozen dataclasses."""

    name: ClassVar[str]
    #: Whether decode(encode(x)) == float16(x) exactly.
    lossless: ClassVar[bool] = False
    num_classes: int

    @classmethod
    def parse_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The codec's keyword arguments from a store's ``codec.params``; ConfigError if invalid."""
        _check_keys(cls.name, params, set())
        return {}

    @classmethod
    def build(cls, params: Mapping[str, Any], num_classes: int, temperature: float) -> Self:
        """The codec for rows of ``num_classes`` logits; the class count is checked here."""
        return cls(num_classes, **cls.parse_params(params))  # type: ignore[call-arg]

    @property
    def dtype(self) -> str:
        """Stored dtype: ``float16`` (one value per logit) or ``uint8`` (encoded byte rows)."""
        return "uint8"

    @property
    def row_size(self) -> int:
        """Stored elements per row (classes for float16, bytes otherwise)."""
        raise NotImplementedError

    @property
    def fill_value(self) -> Any:
        # All-ones bytes: the row's leading float is NaN, so a missing chunk decodes to NaN.
        return 255

    @property
    def entropy_coded(self) -> bool:
        """Whether the stored rows are left to an entropy coder rather than a fast byte compressor."""
        return False

    def row_bytes(self) -> int:
        return self.row_size * np.dtype(self.dtype).itemsize

    def encode(self, logits: FloatArray) -> npt.NDArray[Any]:
        """(rows, num_classes) finite logits -> (rows, row_size) stored values."""
        raise NotImplementedError

    def decode(self, stored: npt.NDArray[Any]) -> FloatArray:
        """(rows, row_size) stored values -> (rows, num_classes) logits."""
        raise NotImplementedError

    def error_bound(self, logits: FloatArray) -> FloatArray:
        """Per-element bound on ``|decode(encode(logits)) - logits|`` (inf where none is promised)."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "num_classes"}  # type: ignore[arg-type]

    def label(self) -> str:
        """Short human name, e.g. ``quantized(bits=4)``."""
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({args})" if args else self.name


def _f16_error(logits: FloatArray) -> FloatArray:
    # Rounding to float16: half a unit in the last place (subnormals: half of 2**-24).
    mag = np.abs(logits.astype(np.float64))
    exponent = np.floor(np.log2(np.maximum(mag, 2.0**-14)))
    return np.asarray(2.0 ** (exponent - 11), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Float16Codec(Codec):
    """IEEE half precision, one value per logit (format version 1's only codec)."""

    name: ClassVar[str] = "float16"
    lossless: ClassVar[bool] = True
    num_classes: int

    @property
    def dtype(self) -> str:
        return "float16"

    @property
    def row_size(self) -> int:
        return self.num_classes

    @property
    def fill_value(self) -> Any:
        return float("nan")

    def encode(self, logits: FloatArray) -> npt.NDArray[Any]:
        return np.asarray(logits).astype(np.float16)

    def decode(self, stored: npt.NDArray[Any]) -> FloatArray:
        return np.asarray(stored, dtype=np.float16)

    def error_bound(self, logits: FloatArray) -> FloatArray:
        return _f16_error(logits)


def _affine(logits: FloatArray, bits: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Any]:
    x = np.asarray(logits, dtype=np.float64)
    levels = (1 << bits) - 1
    lo = x.min(axis=1).astype(_F32)
    hi = x.max(axis=1)
    # Round the scale up so that lo + levels * scale covers the row's maximum.
    scale = ((hi - lo.astype(np.float64)) / levels).astype(_F32)
    scale = np.where(scale.astype(np.float64) * levels < hi - lo, np.nextafter(scale, _F32(np.inf)), scale)
    safe = np.where(scale > 0, scale, 1).astype(np.float64)
    codes = np.clip(np.rint((x - lo[:, None]) / safe[:, None]), 0, levels).astype(np.uint8)
    # The top code is reserved for the row's argmax (first on exact ties): other classes within
    # half a step of the maximum are coded one step lower, so the decoded top-1 class is always the
    # original's. Measured: top-1 agreement 1.0 instead of 0.69-0.94 at 3-4 bits, KL within 2-20%.
    near_top = codes == levels
    near_top[np.arange(len(x)), x.argmax(axis=1)] = False
    codes[near_top] = levels - 1
    return lo, scale.astype(_F32), codes


def _affine_bound(logits: FloatArray, bits: int) -> FloatArray:
    x = np.asarray(logits, dtype=np.float64)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    step = (hi - lo) / ((1 << bits) - 1)
    # float32 storage of offset and scale and the float32 decode add a few ulps of the magnitude.
    slack = 8 * np.finfo(np.float32).eps * np.maximum(np.abs(lo), np.abs(hi))
    bound = np.broadcast_to(step / 2 + slack, x.shape).copy()
    # Classes other than the argmax within a step of the maximum may be coded one step lower.
    lowered = x >= hi - step
    lowered[np.arange(len(x)), x.argmax(axis=1)] = False
    return np.where(lowered, (step + slack) * (1 + 1e-6), bound)


def _header(lo: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    return np.stack([lo, scale], axis=1).astype("<f4").view(np.uint8).reshape(len(lo), 8)


def _read_header(stored: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    head = np.ascontiguousarray(stored[:, :8]).view("<f4").reshape(-1, 2)
    return head[:, 0], head[:, 1]


class _AffineCodec(Codec):
    """Per-row affine quantization to ``bits`` bits (2 to 8); subclasses choose how codes are stored."""

    bits: int

    @classmethod
    def parse_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        _check_keys(cls.name, params, {"bits"})
        return {"bits": _param_int(cls.name, params, "bits", 2, 8)}

    def error_bound(self, logits: FloatArray) -> FloatArray:
        return _affine_bound(logits, self.bits)


@dataclasses.dataclass(frozen=True)
class QuantizedCodec(_AffineCodec):
    """Per-row affine quantization to ``bits`` bits, codes bit-packed (little-endian bit order).

    Row layout: offset (float32 LE), scale (float32 LE), ``ceil(C * bits / 8)`` bytes of codes;
    code ``q`` of class ``c`` occupies bits ``c*bits .. c*bits+bits-1`` of the code bytes, least
    significant bit first. Decoded logit: ``offset + q * scale`` (float32).
    """

    name: ClassVar[str] = "quantized"
    num_classes: int
    bits: int

    @property
    def row_size(self) -> int:
        return 8 + math.ceil(self.num_classes * self.bits / 8)

    def encode(self, logits: FloatArray) -> npt.NDArray[Any]:
        lo, scale, codes = _affine(logits, self.bits)
        rows, classes = codes.shape
        bits = (codes[:, :, None] >> np.arange(self.bits, dtype=np.uint8)) & 1
        packed = np.packbits(bits.reshape(rows, classes * self.bits), axis=1, bitorder="little")
        return np.concatenate([_header(lo, scale), packed], axis=1)

    def decode(self, stored: npt.NDArray[Any]) -> FloatArray:
        stored = np.asarray(stored, dtype=np.uint8)
        lo, scale = _read_header(stored)
        # Code c starts at bit c * bits of the code bytes, so it lies in the two bytes from byte
        # (c * bits) // 8 on: read them as one little-endian 16-bit value, shift and mask (10-25x
        # faster than unpacking every bit; the same codes).
        start = np.arange(self.num_classes) * self.bits
        first, shift = start // 8, (start % 8).astype(np.uint16)
        body = np.zeros((len(stored), stored.shape[1] - 8 + 1), dtype=np.uint16)
        body[:, :-1] = stored[:, 8:]
        codes = ((body[:, first] | (body[:, first + 1] << 8)) >> shift) & np.uint16((1 << self.bits) - 1)
        return lo[:, None] + codes.astype(_F32) * scale[:, None]


@dataclasses.dataclass(frozen=True)
class QuantizedEntropyCodec(_AffineCodec):
    """Per-row affine quantization to ``bits`` bits, one code per byte, entropy-coded by zstd.

    Row layout: offset (float32 LE), scale (float32 LE), ``C`` code bytes. The array's zstd
    compressor does the entropy coding, so the stored size follows the codes' entropy.
    """

    name: ClassVar[str] = "quantized_entropy"
    num_classes: int
    bits: int

    @property
    def row_size(self) -> int:
        return 8 + self.num_classes

    @property
    def entropy_coded(self) -> bool:
        return True

    def encode(self, logits: FloatArray) -> npt.NDArray[Any]:
        lo, scale, codes = _affine(logits, self.bits)
        return np.concatenate([_header(lo, scale), codes], axis=1)

    def decode(self, stored: npt.NDArray[Any]) -> FloatArray:
        stored = np.asarray(stored, dtype=np.uint8)
        lo, scale = _read_header(stored)
        return lo[:, None] + stored[:, 8:].astype(_F32) * scale[:, None]


def all_finite(values: npt.NDArray[Any]) -> bool:
    """``np.isfinite(values).all()``; for float16 on the bits (numpy's float16 isfinite is 10x slower)."""
    if values.dtype == np.float16:
        # Infinities and NaNs, and only they, have every exponent bit set.
        return not ((np.ascontiguousarray(values).view(np.uint16) & 0x7C00) == 0x7C00).any()
    return bool(np.isfinite(values).all())


def index_dtype(num_classes: int) -> np.dtype[Any]:
    """The smallest unsigned integer type that holds every class id."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype).newbyteorder("<")
    raise ConfigError(f"Expected fewer than 2**32 classes. Got {num_classes} instead.")  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class TopKCodec(Codec):
    """The ``k`` largest logits of each row and their class ids, with a tail rule for the rest.

    Row layout: ``k`` float16 LE values (logits for MR and MRS, probabilities at ``temperature``
    for MS) in descending order, ``k`` class ids (uint8/uint16/uint32 LE, the smallest that holds
    the class count), and for MRS the row's minimum logit (float16 LE).
    """

    name: ClassVar[str] = "topk"
    num_classes: int
    k: int
    tail: Tail = "MR"
    temperature: float = 20.0

    @classmethod
    def parse_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        _check_keys(cls.name, params, {"k", "tail"})
        k = _param_int(cls.name, params, "k", 1, (1 << 31) - 1)
        tail = params.get("tail", "MR")
        if tail not in get_args(Tail):
            raise ConfigError(
                f"codec 'topk': params.tail must be one of {get_args(Tail)}. Got {tail!r} instead."
            )
        return {"k": k, "tail": tail}

    @classmethod
    def build(cls, params: Mapping[str, Any], num_classes: int, temperature: float) -> Self:
        parsed = cls.parse_params(params)
        # k must leave a tail: at least one class is not among the top k.
        _param_int(cls.name, parsed, "k", 1, max(1, num_classes - 1))
        return cls(num_classes, parsed["k"], parsed["tail"], temperature)

    @property
    def _ids(self) -> np.dtype[Any]:
        return index_dtype(self.num_classes)

    @property
    def row_size(self) -> int:
        return self.k * (2 + self._ids.itemsize) + (2 if self.tail == "MRS" else 0)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.k, "tail": self.tail}
        if self.tail == "MS":
            out["temperature"] = self.temperature
        return out

    def encode(self, logits: FloatArray) -> npt.NDArray[Any]:
        x = np.asarray(logits, dtype=np.float64)
        rows, k = len(x), self.k
        # Ties broken by the lower class id, so that encoding is a pure function of the values.
        order = np.argsort(-x, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(x, order, axis=1)
        if self.tail == "MS":
            z = x / self.temperature
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            values = np.take_along_axis(p, order, axis=1)
        parts = [
            values.astype("<f2").view(np.uint8).reshape(rows, 2 * k),
            order.astype(self._ids).view(np.uint8).reshape(rows, k * self._ids.itemsize),
        ]
        if self.tail == "MRS":
            parts.append(x.min(axis=1, keepdims=True).astype("<f2").view(np.uint8).reshape(rows, 2))
        return np.concatenate(parts, axis=1)

    def _split(self, stored: npt.NDArray[Any]) -> tuple[FloatArray, npt.NDArray[np.int64]]:
        stored = np.ascontiguousarray(stored, dtype=np.uint8)
        k, width = self.k, self._ids.itemsize
        values = stored[:, : 2 * k].copy().view("<f2").astype(_F32)
        ids = stored[:, 2 * k : 2 * k + width * k].copy().view(self._ids).astype(np.int64)
        return values, ids

    def decode(self, stored: npt.NDArray[Any]) -> FloatArray:
        values, ids = self._split(stored)
        rows, c, k = len(values), self.num_classes, self.k
        ids = np.clip(ids, 0, c - 1)  # damaged ids must not index out of the row
        if self.tail == "MR":
            out = np.full((rows, c), MR_TAIL, dtype=_F32)
        elif self.tail == "MRS":
            mins = stored[:, -2:].copy().view("<f2").astype(_F32)
            out = np.broadcast_to(mins, (rows, c)).copy()
        else:
            tiny = np.finfo(_F32).tiny
            probs = values.astype(np.float64)
            rest = np.maximum(1.0 - probs.sum(axis=1, keepdims=True), 0.0) / max(c - k, 1)
            out = np.broadcast_to(self.temperature * np.log(np.maximum(rest, tiny)), (rows, c)).astype(_F32)
            values = (self.temperature * np.log(np.maximum(probs, tiny))).astype(_F32)
            values = np.where(np.isnan(probs), np.nan, values).astype(_F32)
        np.put_along_axis(out, ids, values, axis=1)
        return out

    def error_bound(self, logits: FloatArray) -> FloatArray:
        x = np.asarray(logits, dtype=np.float64)
        bound = np.full(x.shape, np.inf)
        if self.tail == "MS":
            return bound  # the stored values are probabilities: no bound on logits is promised
        order = np.argsort(-x, axis=1, kind="stable")[:, : self.k]
        np.put_along_axis(bound, order, np.take_along_axis(_f16_error(x), order, axis=1), axis=1)
        if self.tail == "MRS":
            # A tail logit lies between the row minimum and the k-th largest value.
            kth = np.take_along_axis(x, order[:, -1:], axis=1)
            lo = x.min(axis=1, keepdims=True)
            tail = (kth - lo) + _f16_error(lo)
            bound = np.where(np.isinf(bound), tail, bound)
        return bound


#: Every codec by name (read-only). A new codec is a Codec subclass added to this tuple.
CODECS: Mapping[str, type[Codec]] = types.MappingProxyType(
    {c.name: c for c in (Float16Codec, QuantizedCodec, QuantizedEntropyCodec, TopKCodec)}
)
