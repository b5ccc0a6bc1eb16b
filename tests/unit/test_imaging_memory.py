"""Decode memory: the bytes-per-pixel budget and the per-process bound on decodes in flight
(shared/imaging.py), through the engine's decoder and the upload re-encoder.

The audit's image: a 16-bit greyscale PNG of 4990 x 4990, a few dozen KB on the wire, under the
25 MP pixel cap, that cost ~230 MB per decode in flight.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import FaceLibError
from shared.files.uploads import prepare_upload
from shared.imaging import (
    DEFAULT_MAX_DECODE_BYTES,
    configure_decodes,
    decode_slot,
    open_checked,
)
from tests.helpers import face_bytes, measure
from worker.engine.decode import decode_image

MAX_PIXELS = 25_000_000


def sixteen_bit_png(side: int = 4990) -> bytes:
    """A 16-bit greyscale ('I;16') PNG, side x side, compressed to a few dozen KB."""
    im = Image.frombytes("I;16", (side, side), np.full((side, side), 40000, "<u2").tobytes())
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("png") / "i16-4990.png"
    path.write_bytes(sixteen_bit_png())
    return path


def upload(data: bytes, **kw: int) -> object:
    return prepare_upload(
        data, max_bytes=10 * 1024 * 1024, max_pixels=MAX_PIXELS, max_side=1280, quality=90, **kw
    )


def test_the_audit_png_is_small_under_the_pixel_cap_and_16_bit(bomb: Path) -> None:
    data = bomb.read_bytes()
    assert len(data) < 100 * 1024
    with open_checked(data, max_pixels=MAX_PIXELS, min_side=1) as im:
        assert (im.size, im.mode) == ((4990, 4990), "I;16")


def test_the_audit_png_is_refused_by_the_engine_and_the_upload(bomb: Path) -> None:
    data = bomb.read_bytes()
    for decode in (lambda: decode_image(data, max_pixels=MAX_PIXELS), lambda: upload(data)):
        with pytest.raises(FaceLibError) as info:
            decode()
        assert info.value.errcode == 3004
        assert "4990x4990 I;16" in info.value.errmsg and "MB" in info.value.errmsg


_MEASURE = """
import json, sys
from shared.errors import FaceLibError
from shared.files.uploads import prepare_upload
from worker.engine.decode import decode_image
data = open(sys.argv[1], "rb").read()
before, codes = peak_kib(), []
for _ in range(6):  # the audit's 6 concurrent uploads, one after the other here
    for decode in (lambda: decode_image(data, max_pixels=25_000_000),
                   lambda: prepare_upload(data, max_bytes=10**7, max_pixels=25_000_000,
                                          max_side=1280, quality=90)):
        try:
            decode()
            codes.append(0)
        except FaceLibError as err:
            codes.append(err.errcode)
print(json.dumps({"codes": codes, "grew": (peak_kib() - before) * 1024}))
"""


def test_refusing_it_costs_no_memory(bomb: Path) -> None:
    """In a fresh process, whose peak RSS (VmHWM) would show a decode (~350 MB)."""
    result = measure(_MEASURE, str(bomb), timeout=300)
    print(f"12 refusals of the 4990x4990 16-bit PNG: peak RSS grew {result['grew']} bytes")
    assert result["codes"] == [3004] * 12
    assert result["grew"] <= 10 * 1024 * 1024, result


def test_a_smaller_16_bit_png_still_decodes_and_is_scaled_not_clipped() -> None:
    data = sixteen_bit_png(600)
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    assert decoded.rgb.shape == (600, 600, 3)
    assert int(decoded.rgb[0, 0, 0]) == 40000 >> 8  # 156, not 255
    assert upload(data).width == 600


def test_a_jpeg_over_the_budget_decodes_at_a_reduced_scale() -> None:
    im = Image.new("RGB", (4000, 4000), (120, 90, 60))  # 16 MP x 15 B: over 192 MiB at full size
    buf = io.BytesIO()
    im.save(buf, "JPEG")
    decoded = decode_image(buf.getvalue(), max_pixels=MAX_PIXELS)
    assert decoded.rgb.shape == (2000, 2000, 3) and (decoded.width, decoded.height) == (4000, 4000)
    assert (
        decode_image(buf.getvalue(), max_pixels=MAX_PIXELS, max_decode_bytes=2**31).rgb.shape[0]
        == 4000
    )
    # even 1/8 is over a budget this small: refused
    with pytest.raises(FaceLibError) as info:
        decode_image(buf.getvalue(), max_pixels=MAX_PIXELS, max_decode_bytes=1024 * 1024)
    assert info.value.errcode == 3004


def test_the_default_budget_admits_a_12_megapixel_png() -> None:
    assert 4000 * 3000 * 15 <= DEFAULT_MAX_DECODE_BYTES
    im = Image.new("RGB", (4000, 3000), (10, 20, 30))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    assert decode_image(buf.getvalue(), max_pixels=MAX_PIXELS).rgb.shape == (3000, 4000, 3)


@pytest.fixture()
def one_slot() -> Iterator[None]:
    configure_decodes(1, 0.3)
    yield
    configure_decodes(2, 5.0)


def test_decodes_in_flight_are_bounded_then_busy(one_slot: None) -> None:
    photo = face_bytes("obama_small.jpg")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with decode_slot():
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        for decode in (lambda: decode_image(photo, max_pixels=MAX_PIXELS), lambda: upload(photo)):
            with pytest.raises(FaceLibError) as info:
                decode()
            assert info.value.errcode == 7002 and info.value.err.retryable
    finally:
        release.set()
        holder.join()
    assert decode_image(photo, max_pixels=MAX_PIXELS).rgb.size > 0  # the slot is free again
