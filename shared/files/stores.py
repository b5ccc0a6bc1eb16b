"""Where the file server keeps its objects: `FileStore` (put/get/delete/exists of whole objects)
over a local directory (`LocalFileStore`, the default) or S3-compatible object storage such as
MinIO (`S3FileStore`), chosen by FACELIB_FILE_STORE.

Objects are keyed by their file-server path, `<sha256 hex>.jpg`: the same bytes are stored once.
Who may use an object is recorded in Postgres (shared/db/files.py), not here.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from shared.settings import Settings, get_settings

# The only shape a file-server path can have: anything else (../, /etc/passwd, %2e%2e, a
# backslash, a NUL) is refused before it reaches a store.
PATH_PATTERN = re.compile(r"[0-9a-f]{64}\.jpg")
CONTENT_TYPE = "image/jpeg"


class FileMissing(Exception):
    """The store holds no object under this key."""


def is_file_path(path: str) -> bool:
    return isinstance(path, str) and PATH_PATTERN.fullmatch(path) is not None


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
