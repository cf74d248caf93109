"""The pool loader (torch): LPLD's label pool walked epoch by epoch, augmentations replayed exactly.

``schedule`` decides which stored entries an epoch visits (pure functions of plan, policy, seed and
epoch); ``pool`` reads them and replays them into training batches; ``adapters`` gives the same
batches as a torch ``IterableDataset`` for code written around ``DataLoader``.
"""

from lpldstore.loader.adapters import PoolDataset
from lpldstore.loader.pool import LoaderConfig, PoolBatch, PoolLoader
from lpldstore.loader.schedule import Policy, epoch_schedule

__all__ = ["LoaderConfig", "Policy", "PoolBatch", "PoolDataset", "PoolLoader", "epoch_schedule"]
