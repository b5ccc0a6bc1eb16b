"""The one check every embedding backend makes on its input: a uint8 batch of square RGB chips."""

from __future__ import annotations

import numpy as np


def checked_chips(chips: np.ndarray, size: int) -> np.ndarray:
    """`chips` as an array of shape (N, size, size, 3) and dtype uint8, or ValueError."""
    chips = np.asarray(chips)
    if chips.ndim == 3:
        raise ValueError(f"chips must be a batch (N, {size}, {size}, 3); use chips[None] for one")
    if chips.ndim != 4 or chips.shape[1:] != (size, size, 3):
        raise ValueError(f"chips must be (N, {size}, {size}, 3), got {chips.shape}")
    if chips.dtype != np.uint8:
        raise ValueError(f"chips must be uint8, got {chips.dtype}")
    return chips
