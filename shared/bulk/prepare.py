"""One bulk row made ready to submit: checked as the API checks a reg request, its image read
and fitted to the API's base64 limit, its requestIds and request hash computed."""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from shared import persons
from shared.bulk.inputs import Row
from shared.errors import E, FaceLibError
from shared.idnum import is_valid_id_num, normalize_id_num
from shared.imaging import decoding, exif_upright, open_checked, to_rgb
from shared.jobs import request_hash
from shared.settings import Settings

PERSON_TYPES = ("normal", "vip", "inner")  # as persons.person_type's CHECK constraint


def _field_error(err: Any, name: str, detail: str | None = None) -> FaceLibError:
    return FaceLibError(err, detail=detail or name, data={"field": name})


def fit_base64_limit(
    raw: bytes, max_base64_bytes: int, *, max_pixels: int = Image.MAX_IMAGE_PIXELS
) -> bytes:
    """The image as a client would send it: unchanged when its base64 fits the limit, else
    turned upright and re-encoded as JPEG, smaller and smaller until it fits.

    Opened with `imaging.open_checked` (JPEG, PNG, BMP or WebP; at most `max_pixels`, Pillow's
    own bomb limit by default: a large photo is what this is for); FaceLibError
    IMAGE_UNDECODABLE or IMAGE_TOO_MANY_PIXELS otherwise.
    """
    if 4 * ((len(raw) + 2) // 3) <= max_base64_bytes:
        return raw
    with open_checked(raw, max_pixels=max_pixels, min_side=1) as im:
        with decoding():
            im.load()
            upright, _ = exif_upright(im)
            img = to_rgb(upright)
    side, quality = 1600, 90
    while True:
        copy = img.copy()
        copy.thumbnail((side, side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        copy.save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
        if 4 * ((len(data) + 2) // 3) <= max_base64_bytes or side <= 200:
            return data
        side, quality = int(side * 0.8), max(70, quality - 5)


@dataclass
class Prepared:
    row: Row
    id_num: str
    name: str
    image: bytes
    request_ids: list[str]
    request_hash: bytes


def prepare_row(row: Row, settings: Settings) -> Prepared:
    """Check a row as the API checks a reg request and read its image; FaceLibError if bad."""
    if not row.id_num:
        raise _field_error(E.PARAM_MISSING, "idNum")
    id_num = normalize_id_num(row.id_num)
    if not is_valid_id_num(id_num):
        raise FaceLibError(E.IDNUM_INVALID, data={"field": "idNum"})
    if not row.name:
        raise _field_error(E.PARAM_MISSING, "name")
    if len(row.name) > 100:
        raise _field_error(E.PARAM_INVALID, "name", "name: longer than 100 characters")
    if not row.person_type:
        raise _field_error(E.PARAM_MISSING, "personType")
    if row.person_type not in PERSON_TYPES:
        raise _field_error(E.PARAM_INVALID, "personType", f"personType: not one of {PERSON_TYPES}")
    if row.customer_id is not None and len(row.customer_id) > 64:
        raise _field_error(E.PARAM_INVALID, "customerID", "customerID: longer than 64 characters")
    if row.image is None:
        raise _field_error(E.PARAM_MISSING, "image")
    try:
        raw = row.image.read_bytes()
    except OSError:
        raise _field_error(E.PARAM_INVALID, "image", "image: file cannot be read") from None
    if len(raw) < 16:
        raise FaceLibError(E.IMAGE_UNDECODABLE, detail="image data too short")
    image = fit_base64_limit(raw, settings.max_base64_bytes)
    b64 = base64.b64encode(image).decode()
    # the body the API would have received, hashed as the API hashes it (api/persons.py)
    body = {
        "idNum": id_num,
        "name": row.name,
        "personType": row.person_type,
        "customerID": row.customer_id,
        "faceImage": {"type": "image", "origin": "self", "data": b64},
    }
    request_ids = persons.bulk_request_ids(settings, id_num, hashlib.sha256(image).digest())
    return Prepared(row, id_num, row.name, image, request_ids, request_hash(body))
