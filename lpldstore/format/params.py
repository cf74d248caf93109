"""One batch's augmentation parameters as a value, and the pure draw that makes them.

Draws are pure functions of ``(relabel.seed, epoch, batch)``: augmentation ``spec`` draws from
``numpy.random.default_rng(SeedSequence([seed, epoch, batch], spawn_key=(spec.stream,)))``, i.e.
child ``spec.stream`` of ``SeedSequence([seed, epoch, batch]).spawn(...)``, so adding an
augmentation never changes the draws of the others. No global RNG is used anywhere.

:class:`AugmentParams` is the one shape the augmentation record has from relabel to the loss:
``draw_params`` makes it, ``StoreWriter.write`` stores it, ``Entry.params`` reads it back and
``lpldstore.augment.apply_params`` replays it. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from lpldstore.errors import ConfigError, ValidationError
from lpldstore.format.augmentations import (
    INTERPOLATIONS,
    KERNEL,
    MAX_BATCH,
    OPTIONAL,
    PARAM_ARRAYS,
    REGISTRY,
    AugmentSpec,
    BatchGeometry,
    StoredArray,
)
from lpldstore.format.records import RelabelConfig

__all__ = [
    "AugmentParams",
    "active",
    "augment_rng",
    "check_kernel_name",
    "draw_params",
    "validate_params",
]

_CORE_ARRAYS = frozenset(a.name for s in REGISTRY.values() if not s.optional for a in s.arrays)


def _read_only(arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
    arr = np.array(arr, copy=True)
    arr.setflags(write=False)
    return arr


def _as_int(arr: npt.ArrayLike, name: str, dtype: type[np.integer[Any]]) -> npt.NDArray[Any]:
    a = np.asarray(arr)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise ValidationError(f"Expected integer {name!r}. Got dtype {a.dtype} instead.")
    return a.astype(dtype)


def _rebuild(fields: dict[str, Any]) -> AugmentParams:
    return AugmentParams(**fields)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class AugmentParams:
    """All augmentation parameters of one batch of ``n`` real images.

    ``crops`` (n, 4) (top, left, height, width) in source pixels; ``flips`` (n,); ``mix_index``
    (n,) CutMix partner of each slot; ``mix_lam`` the drawn Beta(alpha, alpha) value (a float32
    value, so it survives the store exactly); ``mix_box`` (top, left, bottom, right) in output
    pixels; ``extra`` the stored arrays of optional augmentations (e.g. ``cutout_box``,
    ``cutout_fill``). Arrays are copied and made read-only; equality compares values and dtypes.
    """

    # Any integer (bool) array-likes are accepted and stored as read-only int32 / bool / int64 arrays.
    crops: npt.NDArray[Any]
    flips: npt.NDArray[Any]
    mix_index: npt.NDArray[Any]
    mix_lam: float
    mix_box: tuple[int, int, int, int]
    extra: Mapping[str, npt.NDArray[Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        crops = _read_only(_as_int(self.crops, "crops", np.int32))
        n = crops.shape[0] if crops.ndim == 2 else -1
        if crops.shape != (n, 4):
            raise ValidationError(f"Expected crops of shape (n, 4). Got shape {crops.shape} instead.")
        flips = np.asarray(self.flips)
        if flips.dtype != np.bool_ or flips.shape != (n,):
            raise ValidationError(
                f"Expected flips of dtype bool, shape ({n},). Got {flips.dtype} {flips.shape}."
            )
        mix_index = _read_only(_as_int(self.mix_index, "mix_index", np.int64))
        if mix_index.shape != (n,):
            raise ValidationError(f"Expected mix_index of shape ({n},). Got shape {mix_index.shape} instead.")
        box = tuple(int(v) for v in _as_int(self.mix_box, "mix_box", np.int64).reshape(-1))
        if len(box) != 4:
            raise ValidationError(f"Expected mix_box of 4 integers. Got {box} instead.")
        lam = float(self.mix_lam)
        if not math.isfinite(lam):
            raise ValidationError(f"Expected a finite mix_lam. Got {lam} instead.")
        extra: dict[str, npt.NDArray[Any]] = {}
        for name, value in self.extra.items():
            spec = PARAM_ARRAYS.get(name)
            if spec is None or name in _CORE_ARRAYS:
                optional = sorted(a.name for s in OPTIONAL for a in REGISTRY[s].arrays)
                raise ValidationError(f"Expected extra arrays among {optional}. Got {name!r} instead.")
            arr = np.asarray(value)
            shape = ((n,) if spec.scope == "sample" else ()) + spec.trailing
            if arr.shape != shape:
                raise ValidationError(f"Expected {name!r} of shape {shape}. Got shape {arr.shape} instead.")
            extra[name] = _read_only(_cast(arr, spec))
        for field, value in (("crops", crops), ("flips", _read_only(flips)), ("mix_index", mix_index)):
            object.__setattr__(self, field, value)
        object.__setattr__(self, "mix_box", box)
        object.__setattr__(self, "mix_lam", lam)
        object.__setattr__(self, "extra", types.MappingProxyType(extra))

    @classmethod
    def without_mix(
        cls, *, crops: npt.ArrayLike, flips: npt.ArrayLike, extra: Mapping[str, npt.ArrayLike] | None = None
    ) -> AugmentParams:
        """Params of a batch without CutMix: each slot its own partner, lambda 1, an empty box
        (what ``draw_params`` gives when ``relabel.mix == "none"``)."""
        n = int(np.shape(crops)[0]) if np.ndim(crops) == 2 else -1
        return cls(
            crops=np.asarray(crops),
            flips=np.asarray(flips),
            mix_index=np.arange(max(n, 0)),
            mix_lam=1.0,
            mix_box=(0, 0, 0, 0),
            extra={k: np.asarray(v) for k, v in (extra or {}).items()},
        )

    @property
    def n(self) -> int:
        """The number of real images in the batch."""
        return int(self.crops.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AugmentParams):
            return NotImplemented
        mine, theirs = self.to_arrays(), other.to_arrays()
        return mine.keys() == theirs.keys() and all(
            mine[k].dtype == theirs[k].dtype and np.array_equal(mine[k], theirs[k]) for k in mine
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        # The read-only mapping proxy does not pickle; rebuild through the validating constructor.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["extra"] = dict(self.extra)
        return (_rebuild, (fields,))

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The stored arrays of this batch (n rows per sample array), in the registry's dtypes."""
        arrays = {
            "crop": self.crops,
            "flip": self.flips,
            "mix_index": self.mix_index,
            "mix_lam": np.asarray(self.mix_lam),
            "mix_box": np.asarray(self.mix_box),
        }
        out = {name: _cast(arr, PARAM_ARRAYS[name]) for name, arr in arrays.items()}
        out.update(self.extra)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.ArrayLike]) -> AugmentParams:
        """Inverse of :meth:`to_arrays`: params from the stored arrays of one batch (padding removed)."""
        missing = sorted(_CORE_ARRAYS - set(arrays))
        if missing:
            raise ValidationError(f"Expected the arrays {sorted(_CORE_ARRAYS)}. Got no {missing}.")
        return cls(
            crops=np.asarray(arrays["crop"]),
            flips=np.asarray(arrays["flip"]).astype(np.bool_, copy=False),
            mix_index=np.asarray(arrays["mix_index"]),
            mix_lam=float(np.asarray(arrays["mix_lam"])),
            mix_box=tuple(np.asarray(arrays["mix_box"]).tolist()),
            extra={k: np.asarray(v) for k, v in arrays.items() if k not in _CORE_ARRAYS},
        )


def _cast(arr: npt.NDArray[Any], spec: StoredArray) -> npt.NDArray[Any]:
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.integer) and arr.size:
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise ValidationError(
                f"Expected {spec.name!r} values in [{info.min}, {info.max}] (stored as {dtype}). "
                f"Got values in [{arr.min()}, {arr.max()}] instead."
            )
    return arr.astype(dtype)


def augment_rng(seed: int, epoch: int, batch: int, stream: int) -> np.random.Generator:
    """The generator of augmentation ``stream`` for entry (``epoch``, ``batch``) under ``seed``."""
    for what, value in (("seed", seed), ("epoch", epoch), ("batch", batch), ("stream", stream)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"Expected a non-negative integer {what}. Got {value!r} instead.")
    seq = np.random.SeedSequence([int(seed), int(epoch), int(batch)], spawn_key=(int(stream),))
    return np.random.default_rng(seq)


def draw_params(
    relabel: RelabelConfig,
    image_hw: tuple[int, int],
    n: int,
    epoch: int,
    batch: int,
    *,
    extras: Collection[str] = (),
) -> AugmentParams:
    """Draw the parameters of entry (``epoch``, ``batch``): a pure function of its arguments.

    ``n`` is the number of real images in the batch, ``image_hw`` their (height, width).
    ``extras`` names the optional augmentations to draw (e.g. ``("cutout",)``).
    """
    unknown = sorted(set(extras) - set(OPTIONAL))
    if unknown:
        raise ConfigError(f"Expected optional augmentations among {list(OPTIONAL)}. Got {unknown} instead.")
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or not 0 <= n <= MAX_BATCH:
        raise ConfigError(
            f"Expected a batch of 0 to {MAX_BATCH} images (mix_index is stored as int16). Got {n!r} instead."
        )
    height, width = image_hw
    if not (0 < height <= MAX_BATCH and 0 < width <= MAX_BATCH):
        raise ConfigError(f"Expected image_hw with sides in [1, {MAX_BATCH}]. Got {image_hw!r} instead.")
    geom = BatchGeometry(n=int(n), image_hw=(int(height), int(width)), output_size=relabel.output_size)
    arrays: dict[str, npt.NDArray[Any]] = {}
    for spec in REGISTRY.values():
        if spec.optional and spec.name not in extras:
            continue
        arrays.update(spec.draw(augment_rng(relabel.seed, epoch, batch, spec.stream), relabel, geom))
    return AugmentParams.from_arrays(arrays)


def active(params: AugmentParams) -> list[AugmentSpec]:
    """The augmentations whose arrays ``params`` holds, in replay order (all or none of an optional one's)."""
    active = []
    for spec in REGISTRY.values():
        present = [a.name in params.extra for a in spec.arrays]
        if spec.optional and any(present) and not all(present):
            raise ValidationError(
                f"Expected all of {[a.name for a in spec.arrays]} for {spec.name!r}. "
                f"Got only {sorted(params.extra)}."
            )
        if not spec.optional or all(present):
            active.append(spec)
    return active


def validate_params(params: AugmentParams, image_hw: tuple[int, int], output_size: tuple[int, int]) -> None:
    """Raise :class:`~lpldstore.errors.ValidationError` unless every array fits the geometry."""
    geom = BatchGeometry(n=params.n, image_hw=tuple(image_hw), output_size=tuple(output_size))  # type: ignore[arg-type]
    arrays = params.to_arrays()
    for spec in active(params):
        spec.check(arrays, geom)


def check_kernel_name(
    stored_kernel: str,
    stored_interpolation: str,
    *,
    replay_interpolation: str | None = None,
    override: bool = False,
) -> None:
    """Refuse to replay a store made with another crop kernel or interpolation than replay uses.

    Raises :class:`~lpldstore.errors.ConfigError` when ``stored_kernel`` is not :data:`KERNEL`,
    when ``stored_interpolation`` is not one this library implements, or when
    ``replay_interpolation`` is given and differs from it; ``override=True`` accepts the mismatch
    (the replayed pixels then differ from those the teacher labelled).
    """
    if override:
        return
    # Users meet this through apply_params, LoaderConfig / PoolDataset and `lpld verify`, whose
    # keyword is override_kernel (this function's own is `override`).
    hint = (
        "Replay with the recorded kernel, or pass override_kernel=True (apply_params, LoaderConfig, "
        "PoolDataset; `lpld verify --override-kernel`) to accept pixels the teacher did not see."
    )
    if stored_kernel != KERNEL:
        raise ConfigError(
            f"Expected a store made with the crop kernel {KERNEL!r}. Got {stored_kernel!r} instead. {hint}"
        )
    if stored_interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"Expected a stored interpolation among {INTERPOLATIONS}. Got {stored_interpolation!r} instead. {hint}"
        )
    if replay_interpolation is not None and replay_interpolation != stored_interpolation:
        raise ConfigError(
            f"Expected replay with the stored interpolation {stored_interpolation!r}. "
            f"Got {replay_interpolation!r} instead. {hint}"
        )
