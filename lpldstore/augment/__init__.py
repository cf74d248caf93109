"""The torch layer of augmentation: kernels that apply stored parameters to pixels, and replay.

The parameters themselves (what is drawn, checked and stored) are torch-free and live in
:mod:`lpldstore.format.augmentations` and :mod:`lpldstore.format.params`.
"""

from lpldstore.augment.kernels import KERNELS, normalize_into, to_normalized_float
from lpldstore.augment.replay import apply_params

__all__ = ["KERNELS", "apply_params", "normalize_into", "to_normalized_float"]
