"""The pool loader: replayed image batches and their stored soft labels, epoch after epoch.

::

    loader = PoolLoader("pool.zarr", policy="ilp", seed=0, num_workers=4)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            loss = kd_loss(student(batch.images), batch.logits)

Each training epoch visits the store positions given by :func:`epoch_schedule` (a pure function
of seed and epoch; policies in :mod:`lpldstore.loader.schedule`). A step reads one entry, gathers its
images by the stored indices, replays the stored crop/flip/CutMix with
:func:`~lpldstore.augment.apply_params` and decodes the logits to float32.

Workers and memory: the loader is a map-style ``Dataset`` whose indices are steps
(``batch_size=None``): one ``DataLoader`` with persistent workers serves every epoch, its sampler
yielding the current epoch's steps, each carrying its entry's small arrays (a few KB). Each
process opens the store itself on first use (keyed by its pid, so no handle, ZipStore included,
is used across a fork). The distilled images (uint8, small: IPC50 of ImageNet-1K at 224 px is
7.5 GB, CIFAR-100 IPC50 is 15 MB) are read once by the main process into shared memory that all
workers map; a worker holds only the steps and batches in flight. The epoch's small arrays are
read once per epoch by the main process (one vectorised read per array); logits are read per
step, so memory does not grow with the pool.

Device path: ``device=torch.device("cuda")`` puts the images on that device once and replays
there in the main process (no workers). On CPU the same code runs, giving the same tensors as the
worker path.

Training batch size: ``batch_size=None`` yields one stored batch per step. Otherwise the replayed
samples of consecutive stored batches are cut into batches of ``batch_size``: smaller than the
stored batch splits it, larger joins several. CutMix is always applied on the whole stored batch
before cutting, exactly as relabeling saw it.

Distributed: rank ``r`` of ``w`` takes steps ``r, r + w, ...`` of the schedule, padded by wrapping
so that all ranks have the same number of steps. With a training batch size every rank yields the
same number of batches (:func:`~lpldstore.loader.schedule.rank_batches`), also where a padded
plan's short batches leave the ranks' shares with different numbers of samples.

Resuming: :meth:`PoolLoader.state_dict` is ``{"seed", "epoch", "step"}`` (``step``: batches
yielded so far in the epoch); :meth:`PoolLoader.load_state_dict` continues with exactly the
remaining batches. ``set_epoch`` with the epoch already loaded keeps the step, so the usual
``for epoch in range(start, n): loader.set_epoch(epoch)`` loop resumes correctly.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.utils.data

from lpldstore.augment import apply_params
from lpldstore.errors import ConfigError, EntryError
from lpldstore.format.params import AugmentParams, check_kernel_name
from lpldstore.format.plan import PruningPlan
from lpldstore.format.records import RelabelConfig
from lpldstore.loader import _damage
from lpldstore.loader.schedule import Policy, check_policy, epoch_schedule, rank_batches, rank_share
from lpldstore.storage._open import StoreLike
from lpldstore.storage.reader import EntryMetadata, LabelStore, open_store

__all__ = ["LoaderConfig", "PoolBatch", "PoolLoader", "Policy", "epoch_schedule"]

StartMethod = Literal["fork", "spawn", "forkserver"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """How a :class:`PoolLoader` walks the pool.

    Parameters
    ----------
    policy, seed, steps_per_epoch
        The schedule (:func:`epoch_schedule`); ``steps_per_epoch`` only with ``ilp``.
    batch_size, drop_last
        Training batch size (None: one stored batch per step) and whether to drop the last short
        batch of an epoch when cutting.
    num_workers, multiprocessing_context, prefetch_factor, persistent_workers
        Passed to ``torch.utils.data.DataLoader``; by default the workers live from the first epoch
        to :meth:`PoolLoader.close`, so no epoch pays for starting them or opening the store.
    device
        Replay on this device in the main process (needs ``num_workers=0``).
    labels
        Also yield the hard class labels of the (un-mixed) source images.
    rank, world_size
        This process's share; None takes them from ``torch.distributed`` when initialized.
    override_kernel
        Replay a store made with another crop kernel anyway (see ``check_kernel_name``).
    skip_damaged
        Leave out entries that cannot be read instead of raising ``StoreDamagedError``; they are
        listed in ``PoolLoader.skipped`` and counted in a ``DamageWarning`` (see ``lpldstore._damage``).
    require_bound
        Refuse a store without digests (format version 1 or 2), so that a version-3 store stripped
        of them cannot pass for an older one (see :func:`lpldstore.open_store`).
    """

    policy: Policy = "ilp"
    seed: int = 0
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    drop_last: bool = False
    num_workers: int = 0
    multiprocessing_context: StartMethod | None = None
    prefetch_factor: int | None = None
    persistent_workers: bool = True
    device: str | torch.device | None = None
    labels: bool = False
    rank: int | None = None
    world_size: int | None = None
    override_kernel: bool = False
    skip_damaged: bool = False
    require_bound: bool = False

    def __post_init__(self) -> None:
        check_policy(self.policy)
        for name, minimum in (("seed", 0), ("num_workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"Expected {name} to be an integer >= {minimum}. Got {value!r} instead.")
        for name in ("steps_per_epoch", "batch_size", "prefetch_factor"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"Expected {name} to be None or an integer >= 1. Got {value!r} instead.")
        if self.steps_per_epoch is not None and self.policy != "ilp":
            raise ConfigError(
                f"Expected steps_per_epoch=None with policy {self.policy!r}, whose epoch length is fixed by "
                f"the store. Got {self.steps_per_epoch} instead. Use policy='ilp' to choose the number of steps."
            )
        if self.multiprocessing_context not in (None, "fork", "spawn", "forkserver"):
            raise ConfigError(
                "Expected multiprocessing_context among None, 'fork', 'spawn', 'forkserver'. "
                f"Got {self.multiprocessing_context!r} instead."
            )
        if self.device is not None and self.num_workers:
            raise ConfigError(
                f"Expected num_workers=0 with device={self.device!r}: the device path replays in the main "
                f"process. Got num_workers={self.num_workers} instead. Drop one of the two options."
            )
        if (self.rank is None) != (self.world_size is None):
            raise ConfigError(
                f"Expected rank and world_size both given or both None. Got rank={self.rank!r}, "
                f"world_size={self.world_size!r} instead."
            )


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class PoolBatch:
    """One training batch of ``n`` samples.

    ``images`` float32 (n, 3, h, w) normalized with the store's mean/std, CutMix applied;
    ``logits`` float32 (n, num_classes), the teacher's logits of exactly these mixed images;
    ``keys`` int64 (n, 2): the (epoch, batch) of the stored entry each sample came from;
    ``mix_lam`` float32 (n,): the fraction of each sample's pixels that come from its own source
    image (1 - CutMix box area / image area; 1 without mixing), the weight a mixed hard-label
    loss gives ``labels`` against ``partner_labels``; ``labels`` int64 (n,) the hard labels of
    the source images and ``partner_labels`` int64 (n,) those of the images pasted into them,
    when the loader was asked for labels.
    """

    images: torch.Tensor
    logits: torch.Tensor
    keys: torch.Tensor
    mix_lam: torch.Tensor
    labels: torch.Tensor | None = None
    partner_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _map(self, fn: Any) -> PoolBatch:
        mapped: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            mapped[f.name] = None if value is None else fn(value)
        return PoolBatch(**mapped)

    def to(self, device: str | torch.device, *, non_blocking: bool = False) -> PoolBatch:
        """The same batch with every tensor on ``device`` (``non_blocking`` as ``Tensor.to``)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PoolBatch:
        """The same batch in pinned host memory (``DataLoader(pin_memory=True)`` calls this)."""
        return self._map(lambda t: t.pin_memory())


class _Replayer:
    """Replays entries of one store; opens it lazily, once per process (never across a fork)."""

    def __init__(
        self, source: StoreLike, device: torch.device, override_kernel: bool, require_bound: bool = False
    ) -> None:
        self.source = source
        self.require_bound = require_bound
        self.device = device
        self.override_kernel = override_kernel
        # Set by the loader from one read in the main process. With workers they live in shared
        # memory: forked workers inherit them, spawned ones receive a handle, none makes a copy.
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self._pid: int | None = None
        self._store: LabelStore | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A store handle is per process: a spawned worker opens its own.
        return {**self.__dict__, "_pid": None, "_store": None}

    def _open(self) -> LabelStore:
        if self._pid != os.getpid() or self._store is None:
            # After a fork the inherited handle shares the parent's file offset (a ZipStore then
            # reads garbage): drop it unclosed and open our own.
            self._store, self._pid = open_store(self.source, require_bound=self.require_bound), os.getpid()
        return self._store

    def close(self) -> None:
        if self._store is not None and self._pid == os.getpid():
            self._store.close()
        self._store = None
        self._pid = None

    def replay(self, step: _Step) -> dict[str, Any]:
        store = self._open()
        assert self.images is not None
        # Only the logits are read per step (one chunk); the reader checks the record and the
        # logits as it does in entry_at, so a damaged entry fails the same way here.
        entry = store.entry_from(step.row, step.position, store.logits_at(step.position))
        info = store.dataset
        n, (height, width) = len(entry), store.relabel.output_size
        # The pixels, the logits and the CutMix fractions share one float32 buffer: a worker hands
        # the main process one shared-memory segment per step, not one per tensor (each tensor is
        # its own segment and file descriptor); the key travels as two integers (_with_keys).
        pixels, classes = n * 3 * height * width, entry.logits.size
        flat = torch.empty(pixels + classes + n, dtype=torch.float32, device=self.device)
        logits = flat[pixels : pixels + classes].view(entry.logits.shape)
        if self.device.type == "cpu":  # float16 -> float32 is exact
            logits.numpy()[...] = entry.logits
        else:
            logits.copy_(torch.from_numpy(np.array(entry.logits, dtype=np.float32)).to(self.device))
        mix_lam = flat[pixels + classes :].fill_(_own_fraction(entry.params, store.relabel))
        # The replay reads each sample's source image by its index: no gathered copy of the batch.
        images = apply_params(
            self.images,
            entry.params,
            store.relabel,
            info.mean,
            info.std,
            override_kernel=self.override_kernel,
            indices=entry.indices,
            out=flat[:pixels].view(n, 3, height, width),
        )
        out: dict[str, Any] = {
            "images": images,
            "logits": logits,
            "mix_lam": mix_lam,
            _KEY: (entry.epoch, entry.batch),
        }
        if self.labels is not None:
            labels = self.labels.index_select(0, torch.from_numpy(entry.indices).to(self.device))
            out["labels"] = labels
            partners = torch.tensor(entry.params.mix_index, dtype=torch.int64, device=self.device)
            out["partner_labels"] = labels.index_select(0, partners)
        return out


def _own_fraction(params: AugmentParams, relabel: RelabelConfig) -> float:
    """CutMix's label weight of a sample's own image: 1 - (pasted box area) / (output area)."""
    top, left, bottom, right = params.mix_box
    out_h, out_w = relabel.output_size
    return 1.0 - max(bottom - top, 0) * max(right - left, 0) / (out_h * out_w)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class _Step:
    """What a worker needs to replay one step: its position and padded record row, a few KB."""

    epoch: int
    batch: int
    position: int
    row: dict[str, npt.NDArray[Any]]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class _EpochSteps:
    """An epoch's steps: the reader's metadata of the distinct entries it visits, read once, and
    each step's row in it (an ``ilp`` epoch repeats entries)."""

    meta: EntryMetadata
    rows: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.rows)

    def step(self, i: int) -> _Step:
        meta, row = self.meta, int(self.rows[i])
        return _Step(
            epoch=int(meta.keys[row, 0]),
            batch=int(meta.keys[row, 1]),
            position=int(meta.positions[row]),
            row=meta.row(row),
        )


def _read_epoch(store: LabelStore, positions: npt.NDArray[np.int64]) -> _EpochSteps:
    """One vectorised read per small array for all of an epoch's steps."""
    unique, rows = np.unique(positions, return_inverse=True)
    meta = store.metadata(unique)
    if not meta.committed.all():
        epoch, batch = meta.keys[int(np.flatnonzero(~meta.committed)[0])]
        raise EntryError(
            f"{store.where}: entry (epoch={epoch}, batch={batch}) is not committed: the writer has not "
            "finished it. Train once the store is complete (`lpldstore verify`)."
        )
    return _EpochSteps(meta=meta, rows=rows.astype(np.int64).reshape(-1))


class _StepDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Map-style dataset whose indices are steps: ``dataset[step]`` replays that step."""

    def __init__(self, replayer: _Replayer) -> None:
        self.replayer = replayer

    def __getitem__(self, step: _Step) -> dict[str, torch.Tensor]:
        return self.replayer.replay(step)


class _EpochSampler(torch.utils.data.Sampler[_Step]):
    """Yields the steps of the epoch set last, so one DataLoader (and its persistent workers)
    serves every epoch: the workers receive each step's small arrays with its index and never
    hold an epoch's metadata."""

    def __init__(self) -> None:
        self.epoch: _EpochSteps | None = None

    def __len__(self) -> int:
        return 0 if self.epoch is None else len(self.epoch)

    def __iter__(self) -> Iterator[_Step]:
        epoch = self.epoch
        if epoch is not None:
            for i in range(len(epoch)):
                yield epoch.step(i)


_KEY = "key"


def _with_keys(stream: Iterator[dict[str, Any]], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """Each replayed step's (epoch, batch) as the per-sample ``keys`` tensor."""
    for item in stream:
        epoch, batch = item.pop(_KEY)
        n = len(item["images"])
        item["keys"] = torch.tensor([[epoch, batch]], dtype=torch.int64, device=device).repeat(n, 1)
        yield item


def _cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if len(parts) == 1:
        return parts[0]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _cut(
    stream: Iterator[dict[str, torch.Tensor]], batch_size: int, skip: int, drop_last: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """Cut a stream of stored batches into batches of ``batch_size``, after dropping ``skip`` samples."""
    buffer: list[dict[str, torch.Tensor]] = []
    held = 0
    for part in stream:
        if skip:
            dropped = min(skip, len(part["images"]))
            part = {k: v[dropped:] for k, v in part.items()}
            skip -= dropped
        buffer.append(part)
        held += len(part["images"])
        while held >= batch_size:
            joined = _cat(buffer)
            yield {k: v[:batch_size] for k, v in joined.items()}
            rest = {k: v[batch_size:] for k, v in joined.items()}
            held -= batch_size
            buffer = [rest] if held else []
    if held and not drop_last:
        yield _cat(buffer)


def _distributed_share() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class PoolLoader:
    """Iterate over a store's label pool as training batches (see the module docstring).

    ``PoolLoader(source, config)`` or ``PoolLoader(source, policy=..., seed=..., ...)`` with the
    fields of :class:`LoaderConfig`. Iterating yields :class:`PoolBatch` objects for the current
    epoch (``set_epoch``).
    """

    def __init__(self, source: StoreLike, config: LoaderConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise ConfigError(
                f"Expected a LoaderConfig or keyword options, not both. Got both (options {sorted(options)}). "
                "Use dataclasses.replace(config, ...) to change a config."
            )
        self.config = config if config is not None else LoaderConfig(**options)
        self.source = source
        # Read the metadata and close again; the first iteration opens the handle this process keeps.
        with open_store(source, require_bound=self.config.require_bound) as store:
            self.plan: PruningPlan = store.plan
            check_kernel_name(
                store.relabel.kernel, store.relabel.interpolation, override=self.config.override_kernel
            )
        cfg = self.config
        rank, world = (
            _distributed_share() if cfg.rank is None or cfg.world_size is None else (cfg.rank, cfg.world_size)
        )
        self.rank: int = rank
        self.world_size: int = world
        rank_share(np.zeros(0, dtype=np.int64), self.rank, self.world_size)  # validates rank/world_size
        self.device = torch.device(cfg.device) if cfg.device is not None else torch.device("cpu")
        self._replayer = _Replayer(source, self.device, cfg.override_kernel, cfg.require_bound)
        # Real images per stored batch index, looked up per step (len() is called every epoch).
        self._batch_lengths = np.array(
            [self.plan.batch_length(b) for b in range(self.plan.batches_per_epoch)], dtype=np.int64
        )
        # Built on the first iteration with workers and reused for every epoch after it.
        self._sampler = _EpochSampler()
        self._dataloader: torch.utils.data.DataLoader[dict[str, torch.Tensor]] | None = None
        self._seed = cfg.seed
        self._epoch = 0
        self._step = 0
        self.skipped: list[tuple[int, int]] = []  # damaged entries left out of the last epoch iterated

    # -- schedule ------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the training epoch to iterate; keeps a resumed step when ``epoch`` is the loaded one."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"Expected an epoch integer >= 0. Got {epoch!r} instead.")
        if epoch != self._epoch or self._step >= len(self):
            self._step = 0
        self._epoch = epoch

    def positions(self, epoch: int | None = None) -> npt.NDArray[np.int64]:
        """This rank's store positions for ``epoch`` (default: the current one), in order."""
        cfg = self.config
        full = epoch_schedule(
            self.plan, cfg.policy, self._seed, self._epoch if epoch is None else epoch, cfg.steps_per_epoch
        )
        return rank_share(full, self.rank, self.world_size)

    def _lengths(self, positions: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return self._batch_lengths[self.plan.kept_keys[positions, 1]]

    def __len__(self) -> int:
        bs = self.config.batch_size
        if bs is None:
            return len(self.positions())
        cfg = self.config
        full = epoch_schedule(self.plan, cfg.policy, self._seed, self._epoch, cfg.steps_per_epoch)
        return rank_batches(self._lengths(full), self.world_size, bs, drop_last=cfg.drop_last)

    # -- iteration -----------------------------------------------------------------------------

    def _load_images(self, store: LabelStore) -> None:
        images = torch.from_numpy(store.images())
        labels = torch.from_numpy(store.labels()) if self.config.labels else None
        if self.config.num_workers:
            images.share_memory_()
            if labels is not None:
                labels.share_memory_()
        self._replayer.images = images.to(self.device)
        self._replayer.labels = None if labels is None else labels.to(self.device)

    def _stored_batches(self, positions: npt.NDArray[np.int64]) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.config
        # The main process's own handle (workers never use it: the replayer reopens per pid).
        store = self._replayer._open()
        self.skipped = []
        if cfg.skip_damaged:
            positions, steps = _damage.read_meta_skipping(store, positions, _read_epoch, self.skipped)
        else:
            steps = _read_epoch(store, positions)
        if self._replayer.images is None:
            self._load_images(store)
        replayer = _damage.SkippingReplayer(self._replayer) if cfg.skip_damaged else self._replayer
        if cfg.device is not None or cfg.num_workers == 0:
            yield from _with_keys(
                _damage.drop_skipped(
                    (replayer.replay(steps.step(i)) for i in range(len(steps))), self.skipped, store.where
                ),
                self.device,
            )
            return
        if self._dataloader is None:
            self._dataloader = torch.utils.data.DataLoader(
                _StepDataset(replayer),  # type: ignore[arg-type]
                batch_size=None,
                sampler=self._sampler,
                num_workers=cfg.num_workers,
                multiprocessing_context=cfg.multiprocessing_context,
                prefetch_factor=cfg.prefetch_factor,
                persistent_workers=cfg.persistent_workers,
            )
        self._sampler.epoch = steps
        yield from _with_keys(
            _damage.drop_skipped(iter(self._dataloader), self.skipped, store.where), self.device
        )

    def __iter__(self) -> Iterator[PoolBatch]:
        start = self._step if self._step < len(self) else 0
        positions = self.positions()
        bs = self.config.batch_size
        if bs is None:
            stream = self._stored_batches(positions[start:])
        else:
            # Find the stored batch holding sample start * bs and skip the samples before it.
            offset = start * bs
            ends = np.cumsum(self._lengths(positions))
            first = int(np.searchsorted(ends, offset, side="right"))
            skip = offset - (int(ends[first - 1]) if first else 0)
            stream = _cut(self._stored_batches(positions[first:]), bs, skip, self.config.drop_last)
        self._step = start
        steps = len(self)
        if start >= steps:
            return
        for item in stream:
            self._step += 1
            yield PoolBatch(
                images=item["images"],
                logits=item["logits"],
                keys=item["keys"],
                mix_lam=item["mix_lam"],
                labels=item.get("labels"),
                partner_labels=item.get("partner_labels"),
            )
            if self._step >= steps:
                break  # a fuller share stops where the emptiest rank's share does (rank_batches)

    # -- resuming ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """``{"seed", "epoch", "step"}``: enough to continue with exactly the remaining batches."""
        return {"seed": self._seed, "epoch": self._epoch, "step": self._step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        missing = {"seed", "epoch", "step"} - set(state)
        if missing:
            raise ConfigError(
                f"Expected a loader state with keys seed, epoch, step. Got {sorted(state)} instead "
                f"(missing {sorted(missing)}). Pass what PoolLoader.state_dict() returned."
            )
        for key in ("seed", "epoch", "step"):
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"Expected state[{key!r}] to be an integer >= 0. Got {value!r} instead.")
        self._seed, self._epoch, self._step = state["seed"], state["epoch"], 0
        if state["step"] > len(self):
            raise ConfigError(
                f"Expected state['step'] <= {len(self)} (batches in epoch {self._epoch}). Got {state['step']} "
                "instead. The state comes from a loader with another configuration or store."
            )
        self._step = state["step"]

    def close(self) -> None:
        """Stop the workers and close the store handle of the main process."""
        self._dataloader = None  # its persistent iterator shuts the workers down when collected
        self._replayer.close()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"PoolLoader({str(self.source)!r}, policy={c.policy!r}, seed={self._seed}, epoch={self._epoch}, "
            f"batch_size={c.batch_size}, rank={self.rank}/{self.world_size})"
        )
