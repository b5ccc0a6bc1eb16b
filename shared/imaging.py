"""Opening untrusted image bytes safely: the one place both the engine's decoder (worker) and
the file server's upload re-encoder (API) get their checks from.

- Only JPEG (and phones' MPO), PNG, BMP and WebP decoders are allowed near untrusted bytes.
- width x height is read from the header and checked against the pixel cap *before* any pixel
  is decoded (decompression bombs fail in microseconds, with no memory spent).
- Pillow's many exception types for malformed data all become IMAGE_UNDECODABLE.
"""

from __future__ import annotations

import io
import struct
import warnings

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
DECODE_ERRORS = (
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


def open_checked(data: bytes, *, max_pixels: int, min_side: int) -> Image.Image:
    """Open (not decode) an image and check its header: format, pixel count, smallest side.

    The caller owns the returned image (use it as a context manager). Raises FaceLibError
    IMAGE_UNDECODABLE, IMAGE_TOO_MANY_PIXELS or IMAGE_TOO_SMALL.
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
    except (UnidentifiedImageError, *DECODE_ERRORS) as exc:
        raise FaceLibError(
            E.IMAGE_UNDECODABLE, detail="not a JPEG, PNG, BMP or WebP image"
        ) from exc
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise FaceLibError(E.IMAGE_TOO_MANY_PIXELS, detail=f"{w}x{h} is over {max_pixels} pixels")
    if min(w, h) < max(1, min_side):
        im.close()
        raise FaceLibError(E.IMAGE_TOO_SMALL, detail=f"{w}x{h}, shorter side under {min_side}")
    return im


def exif_upright(im: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF Orientation tag; a malformed EXIF block leaves the image as stored.

    Returns the upright image and whether width and height were swapped (orientations 5-8).
    """
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
        upright = ImageOps.exif_transpose(im)
    except DECODE_ERRORS:
        return im, False
    return (upright if upright is not None else im), orientation in (5, 6, 7, 8)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit greyscale scaled (not clipped), transparency composited over white."""
    if im.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit samples to 255 (a white image): scale instead.
        gray = np.asarray(im).astype(np.uint32)
        if gray.max(initial=0) > 255:
            gray = gray >> 8
        return Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        im.mode == "P" and "transparency" in im.info
    ):
        rgba = im.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            # Transparent pixels keep arbitrary colour values; what a viewer shows is the image
            # over a background, and cut-out portraits are made for a light one.
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgba = Image.alpha_composite(background, rgba)
        return rgba.convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")
