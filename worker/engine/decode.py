"""Image bytes to upright RGB pixels, refusing what is not a safe, sane image before decoding it.

The size check reads width and height from the header and refuses oversize images before one
pixel is decoded, so a decompression bomb costs a few kilobytes of memory and microseconds.
Large JPEGs decode at a reduced DCT scale (Pillow's `draft`), which costs a fraction of a full
decode; the engine asks for a finer scale again when a face would lose resolution (see
`FaceEngine`).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import (
    BmpImagePlugin,  # noqa: F401 - registers the decoder: Image.open(formats=...) needs it loaded
    Image,
    ImageOps,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    UnidentifiedImageError,
    WebPImagePlugin,  # noqa: F401
)

from shared.errors import E, FaceLibError

# What a face photo legitimately comes as (the JPEG plugin also opens the MPO files many phones
# write, as format "MPO"). Restricting the plugins keeps exotic, rarely fuzzed decoders away
# from untrusted bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")

# What Pillow raises on malformed or truncated data, besides its own UnidentifiedImageError.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    TypeError,
    KeyError,
    ZeroDivisionError,
)

_ORIENTATION = 0x0112  # EXIF tag number
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


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
) -> DecodedImage:
    """Decode `data` (JPEG, PNG, BMP or WebP) into upright 8-bit RGB.

    EXIF orientation is applied; alpha is composited onto white; 16-bit samples are reduced to
    8 bits; grayscale and palette images are expanded to RGB. With `draft_long_side`, a JPEG
    whose long side is larger decodes at the coarsest DCT scale (1/2, 1/4 or 1/8) that keeps
    its long side at least `draft_long_side`.

    Raises FaceLibError IMAGE_UNDECODABLE (not an image, unsupported format, truncated or
    corrupt), IMAGE_TOO_MANY_PIXELS (width*height over `max_pixels`, checked from the header
    before decoding) or IMAGE_TOO_SMALL (shorter side below `min_side`).
    """
    if not data:
        raise FaceLibError(E.IMAGE_UNDECODABLE, detail="empty")
    try:
        with warnings.catch_warnings():
            # We check the pixel count ourselves, against our own (lower) limit, right below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise FaceLibError(E.IMAGE_TOO_MANY_PIXELS, detail="over the decoder's limit") from exc
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise FaceLibError(
            E.IMAGE_UNDECODABLE, detail="not a JPEG, PNG, BMP or WebP image"
        ) from exc

    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise FaceLibError(
                E.IMAGE_TOO_MANY_PIXELS, detail=f"{w}x{h} is over {max_pixels} pixels"
            )
        if min(w, h) < max(1, min_side):
            raise FaceLibError(E.IMAGE_TOO_SMALL, detail=f"{w}x{h}, shorter side under {min_side}")
        fmt = im.format or "?"
        if draft_long_side and fmt in ("JPEG", "MPO") and max(w, h) > draft_long_side:
            k = draft_long_side / max(w, h)
            # draft() picks the coarsest scale whose result still covers the requested size.
            im.draft(im.mode, (math.ceil(w * k), math.ceil(h * k)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
                upright, turned = _exif_upright(im)
                rgb = _to_rgb_array(upright)
        except Image.DecompressionBombError as exc:
            raise FaceLibError(E.IMAGE_TOO_MANY_PIXELS, detail="over the decoder's limit") from exc
        except _DECODE_ERRORS as exc:
            raise FaceLibError(E.IMAGE_UNDECODABLE, detail="truncated or corrupt") from exc

    # The full-resolution upright size: the header size, turned like the pixels were.
    width, height = (h, w) if turned else (w, h)
    return DecodedImage(rgb=rgb, width=width, height=height, format=fmt)


def _exif_upright(im: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF Orientation tag; a malformed EXIF block leaves the image as stored.

    Returns the upright image and whether width and height were swapped (orientations 5-8).
    """
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
        upright = ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        return im, False
    return upright, orientation in (5, 6, 7, 8)


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit samples to 255 (a white image): scale instead.
        gray = np.asarray(im).astype(np.uint32)
        if gray.max(initial=0) > 255:
            gray = gray >> 8
        gray8 = np.clip(gray, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray8[:, :, None], 3, axis=2))
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        im.mode == "P" and "transparency" in im.info
    ):
        rgba = im.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            # Transparent pixels keep arbitrary colour values; what a viewer shows is the image
            # over a background, and cut-out portraits are made for a light one.
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgba = Image.alpha_composite(background, rgba)
        return np.asarray(rgba.convert("RGB"))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)
