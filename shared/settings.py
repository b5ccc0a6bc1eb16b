"""Settings, read once from the environment.

One `Settings` object per process (`get_settings()`); nothing opens a connection at import time.
Every variable is documented in `.env.example` and in README.md's settings table. A required
setting that is missing stops the process at start with a message naming the variable.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from functools import lru_cache


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from exc


def _float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc


def _bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _key(name: str) -> bytes:
    raw = _env(name)
    if raw is None:
        raise SettingsError(
            f"{name} is required (32 random bytes, base64). Generate one with: "
            "python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'"
        )
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise SettingsError(f"{name} must be base64") from exc
    if len(key) != 32:
        raise SettingsError(f"{name} must decode to 32 bytes, got {len(key)}")
    return key


# Callback retry schedule (seconds after the previous attempt): about 3 days in all.
DEFAULT_CALLBACK_SCHEDULE = "5,300,1800,7200,18000,36000,50400,72000,86400"


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    # Keys: the blind index of idNum (HMAC-SHA256) and its encryption at rest (AES-256-GCM).
    index_key: bytes = field(repr=False)
    encryption_key: bytes = field(repr=False)
    encryption_key_id: str = "k1"
    port: int = 7007
    token_ttl_seconds: int = 24 * 3600
    sync_timeout_seconds: float = 30.0
    job_max_attempts: int = 3
    job_time_limit_seconds: int = 120
    faces_per_person: int = 10
    match_threshold: float = 70.0
    max_base64_bytes: int = 400 * 1024
    max_request_bytes: int = 1024 * 1024
    max_image_pixels: int = 25_000_000
    min_face_px: int = 80
    embedding_backend: str = "dlib"
    backend_threads: int = 1
    num_jitters: int = 0
    hnsw_ef_search: int = 100
    callback_schedule: tuple[int, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    callback_timeout_seconds: float = 10.0
    callback_allow_private: bool = False
    sweep_interval_seconds: float = 5.0
    queue_max_depth: int = 10_000
    log_level: str = "INFO"


def _schedule(raw: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(x)) for x in raw.split(",") if x.strip())
    except ValueError as exc:
        raise SettingsError("FACELIB_CALLBACK_SCHEDULE must be comma-separated seconds") from exc
    if not values:
        raise SettingsError("FACELIB_CALLBACK_SCHEDULE must list at least one delay")
    return values


def load_settings() -> Settings:
    """Read every setting from the environment; raise SettingsError naming what is wrong."""
    database_url = _env("DATABASE_URL")
    if database_url is None:
        raise SettingsError(
            "DATABASE_URL is required (e.g. postgresql://user:pass@host:5432/facelib); "
            "`facelib up` sets it for the embedded PostgreSQL"
        )
    redis_url = _env("REDIS_URL")
    if redis_url is None:
        raise SettingsError(
            "REDIS_URL is required (e.g. redis://localhost:6379/0); "
            "`facelib up` sets it for the embedded Redis"
        )
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        index_key=_key("FACELIB_INDEX_KEY"),
        encryption_key=_key("FACELIB_ENCRYPTION_KEY"),
        encryption_key_id=_env("FACELIB_ENCRYPTION_KEY_ID", "k1") or "k1",
        port=_int("FACELIB_PORT", 7007),
        token_ttl_seconds=_int("FACELIB_TOKEN_TTL_SECONDS", 24 * 3600),
        sync_timeout_seconds=_float("FACELIB_SYNC_TIMEOUT_SECONDS", 30.0),
        job_max_attempts=_int("FACELIB_JOB_MAX_ATTEMPTS", 3),
        job_time_limit_seconds=_int("FACELIB_JOB_TIME_LIMIT_SECONDS", 120),
        faces_per_person=_int("FACELIB_FACES_PER_PERSON", 10),
        match_threshold=_float("FACELIB_MATCH_THRESHOLD", 70.0),
        max_base64_bytes=_int("FACELIB_MAX_BASE64_BYTES", 400 * 1024),
        max_request_bytes=_int("FACELIB_MAX_REQUEST_BYTES", 1024 * 1024),
        max_image_pixels=_int("FACELIB_MAX_IMAGE_PIXELS", 25_000_000),
        min_face_px=_int("FACELIB_MIN_FACE_PX", 80),
        embedding_backend=_env("FACELIB_EMBEDDING_BACKEND", "dlib") or "dlib",
        backend_threads=_int("FACELIB_BACKEND_THREADS", 1),
        num_jitters=_int("FACELIB_NUM_JITTERS", 0),
        hnsw_ef_search=_int("FACELIB_HNSW_EF_SEARCH", 100),
        callback_schedule=_schedule(
            _env("FACELIB_CALLBACK_SCHEDULE", DEFAULT_CALLBACK_SCHEDULE) or ""
        ),
        callback_timeout_seconds=_float("FACELIB_CALLBACK_TIMEOUT_SECONDS", 10.0),
        callback_allow_private=_bool("FACELIB_CALLBACK_ALLOW_PRIVATE", False),
        sweep_interval_seconds=_float("FACELIB_SWEEP_INTERVAL_SECONDS", 5.0),
        queue_max_depth=_int("FACELIB_QUEUE_MAX_DEPTH", 10_000),
        log_level=_env("FACELIB_LOG_LEVEL", "INFO") or "INFO",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
