"""The pool loader as a torch ``IterableDataset``, for training code written around ``DataLoader``.

::

    dataset = PoolDataset("pool.zarr", policy="stored", output="triple", num_workers=4)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, pin_memory=True)
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for images, soft_logits, hard_labels in loader:
            ...

Each item is one training batch of the pool loader (:class:`~lpldstore.loader.PoolLoader`), as
``(images, logits)`` (``output="pair"``), ``(images, logits, labels)`` (``"triple"``) or the whole
:class:`~lpldstore.loader.PoolBatch` (``"batch"``: CutMix weight and partner labels included).
Wrap it in a ``DataLoader`` with ``batch_size=None``: the items are batches already.

Parallelism: give ``num_workers`` to the dataset (the pool loader's own workers share one copy of
the images in memory) and leave the ``DataLoader`` at ``num_workers=0``. A ``DataLoader`` with
workers also works when the dataset yields stored batches (``batch_size=None``): worker ``i`` of
``k`` replays steps ``i, i + k, ...``, and the ``DataLoader``'s round-robin order gives back exactly
the single-process sequence; each such worker loads its own copy of the images. Cutting stored
batches to another ``batch_size`` needs one stream, so that combination is refused.

Epochs: ``set_epoch`` writes the epoch into a shared-memory tensor, so ``DataLoader`` workers,
persistent ones included, see it when the next epoch's iteration starts.

Distributed: under ``torch.distributed`` (or with ``rank``/``world_size``) each rank iterates its
own share, exactly as the pool loader shares steps (``docs/loader.md``). When ``batch_size`` cuts
the stored batches, the ranks' shares can hold different sample counts (a short last batch of an
epoch falls to one rank), so every rank stops after the smallest rank's number of batches: the
collective calls of ``DistributedDataParallel`` stay in step instead of hanging on the last one.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.utils.data

from lpldstore.errors import ConfigError
from lpldstore.loader.pool import LoaderConfig, PoolBatch, PoolLoader
from lpldstore.loader.schedule import epoch_schedule, rank_batches
from lpldstore.storage._open import StoreLike

__all__ = ["Output", "PoolDataset"]

Output = Literal["pair", "triple", "batch"]
_OUTPUTS = ("pair", "triple", "batch")


class _WorkerShard(PoolLoader):
    """A pool loader that takes every ``k``-th step of its rank's share, from step ``i``."""

    def __init__(self, source: StoreLike, config: LoaderConfig, worker: int, workers: int) -> None:
        super().__init__(source, config)
        self._worker, self._workers = worker, workers

    def positions(self, epoch: int | None = None) -> npt.NDArray[np.int64]:
        return super().positions(epoch)[self._worker :: self._workers]


class PoolDataset(torch.utils.data.IterableDataset[Any]):
    """A store's label pool as an ``IterableDataset`` of training batches (see the module docstring).

    ``PoolDataset(source, config, output=...)`` or ``PoolDataset(source, output=..., policy=...,
    ...)`` with the fields of :class:`~lpldstore.loader.LoaderConfig`. ``output="triple"`` turns
    on ``labels``.
    """

    def __init__(
        self,
        source: StoreLike,
        config: LoaderConfig | None = None,
        *,
        output: Output = "pair",
        **options: Any,
    ) -> None:
        if output not in _OUTPUTS:
            raise ConfigError(
                f"Expected output among {_OUTPUTS} ((images, logits), (images, logits, labels) or the "
                f"PoolBatch). Got {output!r} instead."
            )
        if config is not None and options:
            raise ConfigError(
                f"Expected a LoaderConfig or keyword options, not both. Got both (options {sorted(options)}). "
                "Use dataclasses.replace(config, ...) to change a config."
            )
        cfg = config if config is not None else LoaderConfig(**options)
        if output == "triple" and not cfg.labels:
            cfg = dataclasses.replace(cfg, labels=True)
        self.output: Output = output
        self.source = source
        self._loader = PoolLoader(source, cfg)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._shard: _WorkerShard | None = None

    @property
    def config(self) -> LoaderConfig:
        return self._loader.config

    @property
    def loader(self) -> PoolLoader:
        """The pool loader this dataset iterates in a single process (its state, skipped entries)."""
        return self._loader

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the training epoch; seen by ``DataLoader`` workers from their next iteration on."""
        self._loader.set_epoch(epoch)  # validates, and keeps a resumed step
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (the same on every rank)."""
        self._loader.set_epoch(self.epoch)
        even = self._even_length()
        return len(self._loader) if even is None else even

    def _even_length(self) -> int | None:
        """The smallest rank's batch count when cut batches could differ between ranks, else None."""
        loader, cfg = self._loader, self._loader.config
        if loader.world_size == 1 or cfg.batch_size is None:
            return None
        plan = loader.plan
        seed = loader.state_dict()["seed"]  # the config's, or a loaded state's
        full = epoch_schedule(plan, cfg.policy, seed, self.epoch, cfg.steps_per_epoch)
        lengths = np.array([plan.batch_length(b) for b in range(plan.batches_per_epoch)], dtype=np.int64)
        return rank_batches(
            lengths[plan.kept_keys[full, 1]], loader.world_size, cfg.batch_size, drop_last=cfg.drop_last
        )

    def _batches(self) -> Iterator[PoolBatch]:
        info = torch.utils.data.get_worker_info()
        cfg = self._loader.config
        if info is not None and (cfg.num_workers or (info.num_workers > 1 and cfg.batch_size is not None)):
            raise ConfigError(
                f"Expected a PoolDataset with num_workers=0 (and batch_size=None, with several workers) inside a "
                f"DataLoader with workers. Got num_workers={cfg.num_workers}, batch_size={cfg.batch_size} in a "
                f"DataLoader with {info.num_workers} workers. Give num_workers to PoolDataset and use "
                "DataLoader(num_workers=0)."
            )
        if info is None or info.num_workers == 1:
            self._loader.set_epoch(self.epoch)  # after it, the step is where this epoch starts
            even = self._even_length()
            if even is None:
                yield from self._loader
            else:
                yield from itertools.islice(self._loader, max(even - self._loader.state_dict()["step"], 0))
            return
        if self._shard is None:  # this worker process's own copy of the dataset
            self._shard = _WorkerShard(self.source, cfg, info.id, info.num_workers)
        self._shard.set_epoch(self.epoch)
        yield from self._shard

    def __iter__(self) -> Iterator[Any]:
        for batch in self._batches():
            if self.output == "pair":
                yield batch.images, batch.logits
            elif self.output == "triple":
                yield batch.images, batch.logits, batch.labels
            else:
                yield batch

    def state_dict(self) -> dict[str, int]:
        """The pool loader's resume state (single-process iteration)."""
        return self._loader.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._loader.load_state_dict(state)
        self._epoch.fill_(self._loader.epoch)

    def close(self) -> None:
        """Stop the pool loader's workers and close its store handle."""
        self._loader.close()

    def __repr__(self) -> str:
        return f"PoolDataset({self._loader!r}, output={self.output!r})"
