"""Face chips: the chip dlib's network takes, and the one check every embedding backend makes
on its input (a uint8 batch of square RGB chips)."""

from __future__ import annotations

import numpy as np

# dlib's ResNet (both backends): `dlib.get_face_chip(img, shape, size=150, padding=0.25)` in,
# a 128-d raw descriptor out. Optional models have their own (worker/engine/mobilefacenet.py).
CHIP_SIZE = 150
CHIP_PADDING = 0.25
DESCRIPTOR_DIM = 128


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
