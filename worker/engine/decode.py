"""Image bytes to upright RGB pixels, refusing what is not a safe, sane image before decoding it.

The size check reads width and height from the header and refuses oversize images before one
pixel is decoded, so a decompression bomb costs a few kilobytes of memory and microseconds.
Large JPEGs decode at a reduced DCT scale (Pillow's `draft`), which costs a fraction of a full
decode; the engine asks for a finer scale again when a face would lose resolution (see
`FaceEngine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.imaging import (
    ALLOWED_FORMATS,
    DEFAULT_MAX_DECODE_BYTES,
    check_decode_cost,
    decoding,
    draft_within_budget,
    exif_upright,
    open_checked,
    to_rgb,
)

__all__ = ["ALLOWED_FORMATS", "DecodedImage", "decode_image"]


@dataclass(frozen=True)
class DecodedImage:
    """Upright pixels of an image, possibly at a reduced scale, and its full upright size."""

    rgb: np.ndarray  # (h, w, 3) uint8, C-contiguous
    width: int  # upright width of the image at full resolution
    height: int
    format: str

    @property
    def scale_x(self) -> float:
        """Pixels of `rgb` per original pixel, horizontally (1.0 unless decoded reduced)."""
        return self.rgb.shape[1] / self.width

    @property
    def scale_y(self) -> float:
        return self.rgb.shape[0] / self.height

    @property
    def reduced(self) -> bool:
        return self.rgb.shape[1] < self.width

    def rotated(self, quarter_turns: int) -> DecodedImage:
        """The image turned counter-clockwise by `quarter_turns` * 90 degrees."""
        k = quarter_turns % 4
        if k == 0:
            return self
        rgb = np.ascontiguousarray(np.rot90(self.rgb, k))
        w, h = (self.height, self.width) if k % 2 else (self.width, self.height)
        return DecodedImage(rgb=rgb, width=w, height=h, format=self.format)


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int = 1,
    draft_long_side: int | None = None,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> DecodedImage:
    """Decode `data` (JPEG, PNG, BMP or WebP) into upright 8-bit RGB.

    EXIF orientation is applied; alpha is composited onto white; 16-bit samples are reduced to
    8 bits; grayscale and palette images are expanded to RGB. With `draft_long_side`, a JPEG
    whose long side is larger decodes at the coarsest DCT scale (1/2, 1/4 or 1/8) that keeps
    its long side at least `draft_long_side`, or a coarser one if that would cost more than
    `max_decode_bytes` (other formats over it are refused, shared/imaging.py). The decode holds
    one of the process's decode slots.

    Raises FaceLibError IMAGE_UNDECODABLE (not an image, unsupported format, truncated or
    corrupt), IMAGE_TOO_MANY_PIXELS (width*height over `max_pixels`, or the decode's memory
    over `max_decode_bytes`, checked from the header before decoding), IMAGE_TOO_SMALL
    (shorter side below `min_side`) or BUSY (no decode slot in time).
    """
    im = open_checked(data, max_pixels=max_pixels, min_side=min_side)
    with im:
        w, h = im.size
        fmt = im.format or "?"
        size = None
        if draft_long_side and max(w, h) > draft_long_side:
            k = draft_long_side / max(w, h)
            size = (math.ceil(w * k), math.ceil(h * k))
        # the coarsest DCT scale whose result still covers `size`, or coarser within budget
        draft_within_budget(im, max_decode_bytes, size)
        check_decode_cost(im, max_decode_bytes)
        with decoding():
            im.load()
            upright, turned = exif_upright(im)
            rgb = np.ascontiguousarray(np.asarray(to_rgb(upright)))

    # The full-resolution upright size: the header size, turned like the pixels were.
    width, height = (h, w) if turned else (w, h)
    return DecodedImage(rgb=rgb, width=width, height=height, format=fmt)
