"""Opening untrusted image bytes safely: the one place both the engine's decoder (worker) and
the file server's upload re-encoder (API) get their checks from.

- Only JPEG (and phones' MPO), PNG, BMP and WebP decoders are allowed near untrusted bytes.
- width x height is read from the header and checked against the pixel cap *before* any pixel
  is decoded (decompression bombs fail in microseconds, with no memory spent).
- Pixels are not the whole cost: a decode's peak memory is pixels x bytes per pixel of the
  pipeline for the header's mode (Pillow's storage, the conversion to 8-bit RGB, the copy out):
  12-14 bytes per pixel for 8- and 16-bit modes, ~20 with alpha, more for WebP
  (`scripts/bench_decode_memory.py` prints them). `check_decode_cost` refuses (3004) a decode
  whose estimate is over FACELIB_MAX_DECODE_BYTES before any pixel is decoded: a 60 KB 16-bit
  greyscale PNG of 4990x4990 (under the pixel cap) would cost ~350 MB. A JPEG decodes at a
  reduced DCT scale instead when one fits (`draft_within_budget`).
- At most FACELIB_DECODE_CONCURRENCY decodes run at once per process (`decode_slot`); a decode
  that waits longer than FACELIB_DECODE_WAIT_SECONDS for a slot is answered 7002 (busy, retry).
- Pillow's many exception types for malformed data all become IMAGE_UNDECODABLE.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

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

DEFAULT_MAX_DECODE_BYTES = 192 * 1024 * 1024
# Peak bytes per pixel of a whole decode (open, load, upright, 8-bit RGB, copy out), by the mode
# the header announces: the figures scripts/bench_decode_memory.py prints, rounded up. Modes not
# listed (alpha, CMYK, 32-bit) cost the most; libwebp decodes into a buffer of its own first.
_PEAK_BYTES_PER_PIXEL = {"1": 13, "L": 13, "P": 13, "RGB": 15, "YCbCr": 15}
_PEAK_BYTES_PER_PIXEL.update(dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N"), 15))
_COSTLIEST = 21
_WEBP_BYTES_PER_PIXEL = {"RGB": 24}
_WEBP_COSTLIEST = 30


def bytes_per_pixel(im: Image.Image) -> int:
    """Peak bytes per pixel that decoding `im` (not yet loaded) will cost."""
    if im.format == "WEBP":
        return _WEBP_BYTES_PER_PIXEL.get(im.mode, _WEBP_COSTLIEST)
    if im.mode == "P" and "transparency" in im.info:
        return _COSTLIEST  # composited through RGBA
    return _PEAK_BYTES_PER_PIXEL.get(im.mode, _COSTLIEST)


def decode_cost(im: Image.Image) -> int:
    """Estimated peak bytes of decoding `im` at its current size (after any draft)."""
    w, h = im.size
    return w * h * bytes_per_pixel(im)


def check_decode_cost(im: Image.Image, max_bytes: int) -> None:
    """IMAGE_TOO_MANY_PIXELS (3004) if decoding `im` would cost more than `max_bytes`."""
    cost = decode_cost(im)
    if cost > max_bytes:
        w, h = im.size
        raise FaceLibError(
            E.IMAGE_TOO_MANY_PIXELS,
            errmsg=(
                f"image has too many pixels for its format: {w}x{h} {im.mode} needs about "
                f"{cost // 2**20} MB to decode, over the {max_bytes // 2**20} MB budget"
            ),
        )


def draft_within_budget(
    im: Image.Image, max_bytes: int, size: tuple[int, int] | None = None
) -> None:
    """Let a JPEG decode at a reduced DCT scale (1/2, 1/4, 1/8): the coarsest that still
    covers `size` (None: full size), or coarser still if that one would cost over `max_bytes`.
    Other formats are left alone (`check_decode_cost` judges them). Call once, before load()."""
    if im.format not in ("JPEG", "MPO"):
        return
    w, h = im.size
    scale = 1
    if size is not None:  # Pillow's own rule: the coarsest scale whose result covers `size`
        fit = min(w // max(1, size[0]), h // max(1, size[1]))
        scale = max([s for s in (1, 2, 4, 8) if s <= fit] or [1])
    bpp = bytes_per_pixel(im)
    while scale < 8 and -(-w // scale) * -(-h // scale) * bpp > max_bytes:
        scale *= 2
    if scale > 1:
        im.draft(im.mode, (w // scale, h // scale))


class _DecodeSlots:
    """A per-process bound on decodes in flight (API threads; a worker has one task at a time)."""

    def __init__(self, limit: int, wait_seconds: float) -> None:
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.semaphore = threading.BoundedSemaphore(limit)


_slots = _DecodeSlots(2, 5.0)
_slots_lock = threading.Lock()


def configure_decodes(concurrency: int, wait_seconds: float) -> None:
    """Set this process's decode bound (FACELIB_DECODE_CONCURRENCY, _WAIT_SECONDS); idempotent."""
    global _slots
    with _slots_lock:
        if (_slots.limit, _slots.wait_seconds) != (concurrency, wait_seconds):
            _slots = _DecodeSlots(max(1, concurrency), max(0.0, wait_seconds))


@contextmanager
def decode_slot() -> Iterator[None]:
    """Hold one of the process's decode slots; BUSY (7002) when none frees up in time."""
    slots = _slots
    if not slots.semaphore.acquire(timeout=slots.wait_seconds):
        raise FaceLibError(
            E.BUSY, errmsg="service busy: too many images being decoded, retry later"
        )
    try:
        yield
    finally:
        slots.semaphore.release()


@contextmanager
def decoding() -> Iterator[None]:
    """Around a decode (`im.load()` and what is done with its pixels): one of the process's
    decode slots held (`decode_slot`), and Pillow's errors as errcodes: IMAGE_TOO_MANY_PIXELS
    past the decoder's own limit, IMAGE_UNDECODABLE for truncated or corrupt data."""
    try:
        with decode_slot(), warnings.catch_warnings():
            # the pixel count was checked against our own (lower) limit when the image was opened
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombError as exc:
        raise FaceLibError(E.IMAGE_TOO_MANY_PIXELS, detail="over the decoder's limit") from exc
    except DECODE_ERRORS as exc:
        raise FaceLibError(E.IMAGE_UNDECODABLE, detail="truncated or corrupt") from exc


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
        # Pillow's own conversion clips 16-bit samples to 255 (a white image): scale instead,
        # without 32-bit temporaries for the 16-bit modes (they cost 4 bytes per pixel each).
        gray = np.asarray(im)
        if gray.dtype.kind == "u" and gray.dtype.itemsize == 2:
            gray8 = (gray >> 8) if gray.max(initial=0) > 255 else gray
            del gray
            return Image.fromarray(gray8.astype(np.uint8), "L").convert("RGB")
        wide = gray.astype(np.int64)
        if wide.max(initial=0) > 255:
            wide = wide >> 8
        return Image.fromarray(np.clip(wide, 0, 255).astype(np.uint8), "L").convert("RGB")
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
