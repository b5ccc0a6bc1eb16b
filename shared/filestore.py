"""The file server behind faceImage.origin = fds: uploads, their storage and their retention.

An upload is checked (a real JPEG/PNG/BMP/WebP image, byte and pixel caps read from the header
before any pixel is decoded), turned upright (EXIF orientation), downscaled to
FACELIB_UPLOAD_MAX_SIDE and re-encoded as JPEG (quality FACELIB_UPLOAD_JPEG_QUALITY, metadata
dropped): that is the "compression" the seed recommends fds for. The stored bytes are addressed
by their SHA-256, so the same photo uploaded twice is stored once; the path clients get back and
send as faceImage.data is `<sha256 hex>.jpg` and says nothing else.

Storage sits behind `FileStore` (put/get/delete/exists of whole objects): a local directory
(`LocalFileStore`, the default) or S3-compatible object storage such as MinIO (`S3FileStore`).
Ownership lives in Postgres (`files`, one row per client and path): a client can use, download
and delete only its own rows; an object is removed when its last row goes. The SQL of that
table is here, next to the storage it guards, so each upload, delete and purge holds one
advisory lock per path across the row and the object.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from PIL import (
    BmpImagePlugin,  # noqa: F401 - registers the decoder: Image.open(formats=...) needs it loaded
    Image,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    WebPImagePlugin,  # noqa: F401
)

from shared.db import transaction
from shared.errors import E, FaceLibError
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
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# The only shape a file-server path can have: anything else (../, /etc/passwd, %2e%2e, a
# backslash, a NUL) is refused before it reaches a store.
PATH_PATTERN = re.compile(r"[0-9a-f]{64}\.jpg")
CONTENT_TYPE = "image/jpeg"
MIN_SIDE = 32  # smaller than this cannot hold a face the engine would accept


class FileMissing(Exception):
    """The store holds no object under this key."""


def is_file_path(path: str) -> bool:
    return isinstance(path, str) and PATH_PATTERN.fullmatch(path) is not None


def checked_path(path: str, field: str = "path") -> str:
    """`path` if it is a file-server path, else FaceLibError PARAM_INVALID naming `field`."""
    if not is_file_path(path):
        raise FaceLibError(
            E.PARAM_INVALID,
            detail=f"{field}: not a file-server path (<sha256 hex>.jpg)",
            data={"field": field},
        )
    return path


# --- storage -----------------------------------------------------------------------------------


class FileStore(Protocol):
    """Whole-object storage keyed by file-server path. Keys are checked by the caller."""

    def put(self, key: str, data: bytes, content_type: str = CONTENT_TYPE) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; FileMissing if there is none."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; no error if it is already gone."""
        ...

    def exists(self, key: str) -> bool: ...


class LocalFileStore:
    """Objects as files under `root/<first two hex digits>/<key>`, written atomically."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _file(self, key: str) -> Path:
        if not is_file_path(key):  # keys become file names: never let anything else through
            raise ValueError("invalid file key")
        return self.root / key[:2] / key

    def put(self, key: str, data: bytes, content_type: str = CONTENT_TYPE) -> None:
        target = self._file(key)
        if target.exists():
            return  # content-addressed: the same key holds the same bytes
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            raise FileMissing(key) from None

    def delete(self, key: str) -> None:
        self._file(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()


class S3FileStore:
    """Objects in an S3-compatible bucket (AWS S3, MinIO...). Needs boto3 (imported lazily)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        if client is None:
            import boto3  # lazily: only deployments that choose s3 need it
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                config=Config(
                    connect_timeout=5,
                    read_timeout=30,
                    retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"},  # MinIO serves path-style by default
                ),
            )
        self.client = client

    def put(self, key: str, data: bytes, content_type: str = CONTENT_TYPE) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _s3_not_found(exc):
                raise FileMissing(key) from None
            raise
        return obj["Body"].read()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _s3_not_found(exc):
                return False
            raise
        return True


def _s3_not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def make_file_store(settings: Settings) -> FileStore:
    if settings.file_store == "s3":
        return S3FileStore(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
        )
    return LocalFileStore(settings.files_dir)


_store_lock = threading.Lock()
_store: tuple[int, FileStore] | None = None


def get_file_store() -> FileStore:
    """The process's file store (made again after a fork: an S3 client must not be shared)."""
    global _store
    pid = os.getpid()
    with _store_lock:
        if _store is None or _store[0] != pid:
            _store = (pid, make_file_store(get_settings()))
        return _store[1]


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


def lock_path(conn: psycopg.Connection, path: str) -> None:
    """Serialise upload, delete and purge of one path until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (path,))


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
        lock_path(conn, prepared.path)
        store.put(prepared.path, prepared.data, CONTENT_TYPE)
        row = conn.execute(
            "INSERT INTO files (client_id, path, sha256, size_bytes, original_size_bytes,"
            " width, height, content_type) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (client_id, path) DO UPDATE SET last_used_at = now()"
            " RETURNING *, (xmax = 0) AS created",
            (
                client_id,
                prepared.path,
                prepared.sha256,
                len(prepared.data),
                prepared.original_size,
                prepared.width,
                prepared.height,
                CONTENT_TYPE,
            ),
        ).fetchone()
    assert row is not None
    return row, bool(row.pop("created"))


def find_file(conn: psycopg.Connection, client_id: int, path: str) -> dict[str, Any] | None:
    return conn.execute(
        "SELECT * FROM files WHERE client_id = %s AND path = %s", (client_id, path)
    ).fetchone()


def read_file(client_id: int, path: str, *, touch: bool = True) -> tuple[dict[str, Any], bytes]:
    """The row and bytes of this client's file; FaceLibError IMAGE_FILE_NOT_FOUND otherwise.

    `touch` marks it used now (a job read it), which keeps it from the retention purge.
    """
    checked_path(path)
    with transaction() as conn:
        if touch:
            row = conn.execute(
                "UPDATE files SET last_used_at = now() WHERE client_id = %s AND path = %s"
                " RETURNING *",
                (client_id, path),
            ).fetchone()
        else:
            row = find_file(conn, client_id, path)
    if row is None:
        raise FaceLibError(E.IMAGE_FILE_NOT_FOUND, data={"path": path})
    try:
        return row, get_file_store().get(path)
    except FileMissing:
        log.error("file %s has a row but no stored object", path)
        raise FaceLibError(E.IMAGE_FILE_NOT_FOUND, data={"path": path}) from None


def _drop_object_if_orphan(conn: psycopg.Connection, path: str) -> bool:
    left = conn.execute("SELECT 1 FROM files WHERE path = %s LIMIT 1", (path,)).fetchone()
    if left is None:
        get_file_store().delete(path)
        return True
    return False


def delete_file(client_id: int, path: str) -> None:
    """Delete this client's file (the object too, once no other client holds it)."""
    checked_path(path)
    with transaction() as conn:
        lock_path(conn, path)
        cur = conn.execute(
            "DELETE FROM files WHERE client_id = %s AND path = %s", (client_id, path)
        )
        if cur.rowcount != 1:
            raise FaceLibError(E.IMAGE_FILE_NOT_FOUND, data={"path": path})
        _drop_object_if_orphan(conn, path)


# Rows past retention that no waiting job refers to (job_inputs exist only until a job ends).
_STALE = (
    "f.last_used_at < now() - make_interval(secs => %(age)s) AND NOT EXISTS ("
    " SELECT 1 FROM job_inputs i JOIN jobs j ON j.id = i.job_id"
    " WHERE i.origin = 'fds' AND i.ref = f.path AND j.client_id = f.client_id)"
)


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
            paths = [
                r["path"]
                for r in conn.execute(
                    f"SELECT DISTINCT f.path FROM files f WHERE {_STALE} LIMIT %(batch)s",  # noqa: S608 - constant SQL
                    {"age": age, "batch": batch},
                ).fetchall()
            ]
        for path in paths:
            with transaction() as conn:
                lock_path(conn, path)
                cur = conn.execute(
                    f"DELETE FROM files f WHERE f.path = %(path)s AND {_STALE}",  # noqa: S608 - constant SQL
                    {"path": path, "age": age},
                )
                counts["rows"] += cur.rowcount
                if cur.rowcount and _drop_object_if_orphan(conn, path):
                    counts["objects"] += 1
        if len(paths) < batch:
            return counts
