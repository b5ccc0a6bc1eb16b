"""The file server's uploads (faceImage.origin = fds): check, re-encode, store, read, delete, purge.

An upload is checked (a real JPEG/PNG/BMP/WebP image, byte and pixel caps read from the header
before any pixel is decoded), turned upright (EXIF orientation), downscaled to
FACELIB_UPLOAD_MAX_SIDE and re-encoded as JPEG (quality FACELIB_UPLOAD_JPEG_QUALITY, metadata
dropped): that is the "compression" the seed recommends fds for. The stored bytes are addressed
by their SHA-256, so the same photo uploaded twice is stored once; the path clients get back and
send as faceImage.data is `<sha256 hex>.jpg` and says nothing else.

The object goes to the file store (shared/files/stores.py); ownership lives in Postgres
(`files`, one row per client and path, shared/db/files.py): a client can use, download and
delete only its own rows; an object is removed when its last row goes. Each upload, delete and
purge holds one advisory lock per path (`db.files.lock_path`) across the row and the object.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from PIL import (
    BmpImagePlugin,  # noqa: F401 - registers the decoder: Image.open(formats=...) needs it loaded
    Image,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    WebPImagePlugin,  # noqa: F401
)

from shared import db
from shared.db import transaction
from shared.errors import E, FaceLibError
from shared.files.stores import CONTENT_TYPE, FileMissing, get_file_store, is_file_path
from shared.imaging import (
    DEFAULT_MAX_DECODE_BYTES,
    check_decode_cost,
    configure_decodes,
    decoding,
    draft_within_budget,
    exif_upright,
    open_checked,
    to_rgb,
)
from shared.settings import get_settings

log = logging.getLogger(__name__)

MIN_SIDE = 32  # smaller than this cannot hold a face the engine would accept


def checked_path(path: str, field: str = "path") -> str:
    """`path` if it is a file-server path, else FaceLibError PARAM_INVALID naming `field`."""
    if not is_file_path(path):
        raise FaceLibError(
            E.PARAM_INVALID,
            detail=f"{field}: not a file-server path (<sha256 hex>.jpg)",
            data={"field": field},
        )
    return path


# --- the upload's "compression" ------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    sha256: bytes
    width: int
    height: int
    original_size: int

    @property
    def path(self) -> str:
        return f"{self.sha256.hex()}.jpg"


def prepare_upload(
    raw: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_side: int,
    quality: int,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> PreparedImage:
    """Check an uploaded image and re-encode it: upright, longest side <= max_side, JPEG.

    Raises FaceLibError: IMAGE_TOO_LARGE (bytes), IMAGE_UNDECODABLE (not an image, truncated),
    IMAGE_TOO_MANY_PIXELS (width*height, or the decode's memory estimate over
    `max_decode_bytes`, from the header before decoding), IMAGE_TOO_SMALL, BUSY (all of the
    process's decode slots taken for FACELIB_DECODE_WAIT_SECONDS).
    """
    if len(raw) > max_bytes:
        raise FaceLibError(
            E.IMAGE_TOO_LARGE,
            errmsg=f"image too large: an upload must be at most {max_bytes} bytes",
        )
    with open_checked(raw, max_pixels=max_pixels, min_side=MIN_SIDE) as im:
        # JPEG: decode at a reduced DCT scale; both sides stay >= max_side, so the final
        # Lanczos resize still sets the quality (coarser only if the budget demands it)
        draft_within_budget(im, max_decode_bytes, (max_side, max_side))
        check_decode_cost(im, max_decode_bytes)
        with decoding():
            im.load()
            upright, _ = exif_upright(im)
            rgb = to_rgb(upright)
            if max(rgb.size) > max_side:
                rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            rgb.save(out, "JPEG", quality=quality, optimize=True)  # no EXIF, no ICC
    data = out.getvalue()
    return PreparedImage(
        data=data,
        sha256=hashlib.sha256(data).digest(),
        width=rgb.width,
        height=rgb.height,
        original_size=len(raw),
    )


# --- files rows and objects, together --------------------------------------------------------------


def store_upload(client_id: int, raw: bytes) -> tuple[dict[str, Any], bool]:
    """Prepare, store and record an upload. Returns (files row, created: False if a re-upload)."""
    s = get_settings()
    configure_decodes(s.decode_concurrency, s.decode_wait_seconds)
    prepared = prepare_upload(
        raw,
        max_bytes=s.upload_max_bytes,
        max_pixels=s.max_image_pixels,
        max_side=s.upload_max_side,
        quality=s.upload_jpeg_quality,
        max_decode_bytes=s.max_decode_bytes,
    )
    store = get_file_store()
    with transaction() as conn:
        db.files.lock_path(conn, prepared.path)
        store.put(prepared.path, prepared.data, CONTENT_TYPE)
        return db.files.record_upload(
            conn,
            client_id=client_id,
            path=prepared.path,
            sha256=prepared.sha256,
            size_bytes=len(prepared.data),
            original_size_bytes=prepared.original_size,
            width=prepared.width,
            height=prepared.height,
            content_type=CONTENT_TYPE,
        )


def read_file(client_id: int, path: str, *, touch: bool = True) -> tuple[dict[str, Any], bytes]:
    """The row and bytes of this client's file; FaceLibError IMAGE_FILE_NOT_FOUND otherwise.

    `touch` marks it used now (a job read it), which keeps it from the retention purge.
    """
    checked_path(path)
    with transaction() as conn:
        if touch:
            row = db.files.touch_file(conn, client_id, path)
        else:
            row = db.files.find_file(conn, client_id, path)
    if row is None:
        raise FaceLibError(E.IMAGE_FILE_NOT_FOUND, data={"path": path})
    try:
        return row, get_file_store().get(path)
    except FileMissing:
        log.error("file %s has a row but no stored object", path)
        raise FaceLibError(E.IMAGE_FILE_NOT_FOUND, data={"path": path}) from None


def _drop_object_if_orphan(conn: psycopg.Connection, path: str) -> bool:
    if not db.files.path_in_use(conn, path):
        get_file_store().delete(path)
        return True
    return False


def delete_file(client_id: int, path: str) -> None:
    """Delete this client's file (the object too, once no other client holds it)."""
    checked_path(path)
    with transaction() as conn:
        db.files.lock_path(conn, path)
        if not db.files.delete_row(conn, client_id, path):
            raise FaceLibError(E.IMAGE_FILE_NOT_FOUND, data={"path": path})
        _drop_object_if_orphan(conn, path)


def delete_images(conn: psycopg.Connection, image_sha256s: list[bytes]) -> int:
    """Delete the stored copies of these images: every client's row, and the object; how many
    rows went. Runs in the caller's transaction (a face's or a person's deletion).

    A face's `image_sha256` is the hash of the bytes the worker read; for an fds image that is
    the stored object's hash (`files.sha256`), so the copies are found by it. The same per-path
    lock as uploads and purges keeps a concurrent upload of the same photo from recreating a row
    whose object is being removed.
    """
    if not image_sha256s:
        return 0
    deleted = 0
    for path in db.files.paths_of_images(conn, image_sha256s):
        db.files.lock_path(conn, path)
        deleted += db.files.delete_rows_of_path(conn, path)
        get_file_store().delete(path)
    return deleted


def purge_unused_files(retention_days: float, batch: int = 500) -> dict[str, int]:
    """Delete files unused for `retention_days` (and not waited on by a job); 0 disables it.

    Returns how many rows and stored objects went. Each path is purged in its own short
    transaction under its lock, re-checking the condition, so a concurrent upload of the same
    image (which refreshes last_used_at) keeps it.
    """
    counts = {"rows": 0, "objects": 0}
    if retention_days <= 0:
        return counts
    age = retention_days * 86400.0
    while True:
        with transaction() as conn:
            paths = db.files.stale_paths(conn, age, batch)
        for path in paths:
            with transaction() as conn:
                db.files.lock_path(conn, path)
                rows = db.files.delete_stale_rows(conn, path, age)
                counts["rows"] += rows
                if rows and _drop_object_if_orphan(conn, path):
                    counts["objects"] += 1
        if len(paths) < batch:
            return counts
