"""Settings, read once from the environment: the only module that reads it.

One `Settings` object per process (`get_settings()`); nothing opens a connection at import time.
Every variable is documented in `.env.example` and in README.md's settings table. A required
setting that is missing stops the process at start with a message naming the variable.

A few settings are needed before `Settings` can be read, because `facelib` first starts the
embedded servers that DATABASE_URL and REDIS_URL then name: `facelib_home()`, `redis_port()` and
`pg_memory_mb()` read those, and `load_settings()` reads them through the same functions. The
only other code that touches the environment is the CLI's process wiring (shared/cli/wiring.py:
what `facelib` sets for itself and its child processes), and `child_env()` below.

FACELIB_HOME (default `./var`) is resolved against the working directory, once, to an absolute
path; `facelib up` passes that absolute path on to the processes it starts.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SettingsError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _parsed(name: str, default: T, parse: Callable[[str], T], what: str) -> T:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from exc


def _int(name: str, default: int) -> int:
    return _parsed(name, default, int, "an integer")


def _float(name: str, default: float) -> float:
    return _parsed(name, default, float, "a number")


def _bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (_env(name, default) or default).strip().lower()
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


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


# --- read before Settings can be: `facelib` starts the servers DATABASE_URL / REDIS_URL name ---


def facelib_home() -> Path:
    """FACELIB_HOME: embedded servers' data, dev keys, installed models, local files. Default
    `./var`; a relative path is taken from the working directory; the result is absolute."""
    return Path(_env("FACELIB_HOME", "./var") or "./var").resolve()


def redis_port() -> int:
    """FACELIB_REDIS_PORT: the port of the embedded Redis (`facelib up`, `facelib bulk`)."""
    return _int("FACELIB_REDIS_PORT", 6390)


def pg_memory_mb() -> int:
    """FACELIB_PG_MEMORY_MB: the embedded PostgreSQL's memory budget; 0: a quarter of the RAM."""
    return _int("FACELIB_PG_MEMORY_MB", 0)


def match_model_name() -> str:
    """FACELIB_MATCH_MODEL: the model that decides recong, verify and the duplicate check."""
    return _choice("FACELIB_MATCH_MODEL", "dlib", ("dlib", "mobilefacenet"))


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: this process's, with `extra` on top."""
    return {**os.environ, **extra}


# Callback retry schedule (seconds after the previous attempt): about 3 days in all.
DEFAULT_CALLBACK_SCHEDULE = "5,300,1800,7200,18000,36000,50400,72000,86400"


# The audit log is kept at least 5 years whatever FACELIB_AUDIT_RETENTION_DAYS says (the
# record-keeping period banks are commonly held to; docs/reliability.md).
AUDIT_MIN_RETENTION_DAYS = 1825.0


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    # Keys: the blind index of idNum (HMAC-SHA256) and its encryption at rest (AES-256-GCM).
    index_key: bytes = field(repr=False)
    encryption_key: bytes = field(repr=False)
    encryption_key_id: str = "k1"
    # Older keys by id (FACELIB_ENCRYPTION_KEYS), kept to decrypt what they encrypted (rotation).
    encryption_keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    bind_host: str = "127.0.0.1"
    port: int = 7007
    token_ttl_seconds: int = 24 * 3600
    sync_timeout_seconds: float = 30.0
    job_max_attempts: int = 3
    job_time_limit_seconds: int = 120
    faces_per_person: int = 10
    match_threshold: float = 70.0
    match_mode: str = "gallery"
    gallery_target: float = 0.01
    duplicate_policy: str = "refuse"
    duplicate_score: float = 80.0
    max_base64_bytes: int = 400 * 1024
    max_request_bytes: int = 1024 * 1024
    max_image_pixels: int = 25_000_000
    # Decoding: the estimated peak memory of one decode (pixels x bytes per pixel of its mode,
    # shared/imaging.py), and how many decodes run at once per process (then 7002 after a wait).
    max_decode_bytes: int = 192 * 1024 * 1024
    decode_concurrency: int = 2
    decode_wait_seconds: float = 5.0
    min_face_px: int = 80
    embedding_backend: str = "onnx"
    backend_threads: int = 1
    num_jitters: int = 0
    hnsw_ef_search: int = 100
    exact_search_max: int = 20_000
    callback_schedule: tuple[int, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    callback_timeout_seconds: float = 10.0
    callback_allow_private: bool = False
    # host[:port] / IP[:port] / CIDR[:port] exempt from the callback address (and port) rule
    callback_allowlist: tuple[str, ...] = ()
    callback_concurrency: int = 4  # processes of the callbacks worker pool (`facelib up`)
    sweep_interval_seconds: float = 5.0
    queue_max_depth: int = 10_000
    rate_limit: str = "50/second;1000/minute"
    unauth_rate_limit: str = "30/minute"
    token_key_rate_limit: str = "10/minute"  # noqa: S105 - a rate, not a secret
    metrics_token: str | None = field(default=None, repr=False)
    metrics_cache_seconds: float = 15.0
    log_level: str = "INFO"
    # Where gunicorn's workers aggregate their metrics (unset: one process, its own registry).
    prometheus_multiproc_dir: str | None = None
    # The `facelib` command and its embedded servers (`facelib_home()` and the functions below it).
    home: Path = field(default_factory=lambda: Path("var").resolve())
    redis_port: int = 6390
    pg_memory_mb: int = 0
    worker_concurrency: int = 2  # processes of the face-jobs worker pool (`facelib up`)
    # File server (origin fds): where uploads live and how they are "compressed".
    files_dir: str = "./var/files"
    file_store: str = "local"  # local | s3
    s3_endpoint_url: str | None = None
    s3_bucket: str = "facelib-files"
    s3_region: str = "us-east-1"
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)
    upload_max_bytes: int = 10 * 1024 * 1024
    upload_max_side: int = 1280
    upload_jpeg_quality: int = 90
    file_retention_days: float = 30.0
    # Reliability (docs/reliability.md): send timeout of a queued job, cap on attempts lost with
    # their worker, database fail-fast, retention of finished jobs, audit rows, callback attempts.
    job_send_timeout_seconds: float = 60.0
    job_max_lost_attempts: int = 5
    db_pool_timeout_seconds: float = 0.5
    jobs_retention_days: float = 30.0
    audit_retention_days: float = 1825.0
    callback_attempts_retention_days: float = 90.0
    # URL fetching (origin uri): hosts/CIDRs exempt from the address and port policy.
    fetch_allowlist: tuple[str, ...] = ()
    fetch_max_bytes: int = 10 * 1024 * 1024
    fetch_timeout_seconds: float = 10.0
    # Search at scale (docs/scaling.md): hnsw.ef_search per million faces in one index partition
    # (it grows linearly with the partition from FACELIB_HNSW_EF_SEARCH up to
    # FACELIB_HNSW_EF_MAX), the faces per index
    # partition and the graph parameters that `facelib reindex` builds the indexes with.
    hnsw_ef_per_million: int = 400
    hnsw_ef_max: int = 400
    search_partition_faces: int = 250_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 64

    # Optional embedding models (docs/models.md): those enabled and installed are computed at
    # every registration beside dlib's; `match_model` decides recong, verify and the duplicate
    # check ("dlib" or an enabled model). Enrolment photos kept AES-GCM encrypted (key ids as
    # idNums) so that `facelib reembed` can fill in a model enabled later.
    models: tuple[str, ...] = ()
    match_model: str = "dlib"
    keep_enrolment_photos: bool = False
    # FACELIB_MODEL_CACHE: where the ONNX backend caches the graph it builds from dlib's model
    # file (docs/onnx-backend.md); None: ~/.cache/facelib. The worker passes it to the engine
    # through EngineConfig.model_cache_dir, so the engine reads no environment.
    model_cache_dir: str | None = None
    # connections per process in the database pool (shared/db/pool.py); keep it above the API's
    # threads per process
    db_pool_size: int = 10


def _models() -> tuple[str, ...]:
    """FACELIB_MODELS: comma-separated optional models to compute at registration."""
    from shared.models import MODELS

    names = tuple(
        n.strip().lower() for n in (_env("FACELIB_MODELS", "") or "").split(",") if n.strip()
    )
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        known = ", ".join(sorted(MODELS))
        raise SettingsError(f"FACELIB_MODELS: unknown model {unknown[0]!r} (known: {known})")
    return tuple(dict.fromkeys(names))


def _rate_limit(name: str, default: str) -> str:
    """A flask-limiter limit string ("50/second;1000/minute"), checked now: a limit that does
    not parse must stop the process, never silently turn the limit off."""
    raw = _env(name, default) or default
    if not rate_limit_valid(raw):
        raise SettingsError(f"{name} must be like 50/second;1000/minute, got {raw!r}")
    return raw


def rate_limit_valid(raw: str | None) -> bool:
    """True when `raw` is a non-empty limit string the limiter understands."""
    from limits import parse_many

    if not raw or not raw.strip():
        return False
    try:
        return bool(parse_many(raw))
    except ValueError:
        return False


def _encryption_keys(current_id: str, current: bytes) -> dict[str, bytes]:
    """FACELIB_ENCRYPTION_KEYS: "k0:<base64>,k-old:<base64>" - earlier keys, by the id stored
    beside each ciphertext, so rotation needs no re-encryption first."""
    keys: dict[str, bytes] = {}
    for item in (_env("FACELIB_ENCRYPTION_KEYS", "") or "").split(","):
        if not item.strip():
            continue
        key_id, sep, raw = item.strip().partition(":")
        if not sep or not key_id:
            raise SettingsError("FACELIB_ENCRYPTION_KEYS must be id:base64[,id:base64...]")
        try:
            key = base64.b64decode(raw.strip(), validate=True)
        except ValueError as exc:
            raise SettingsError(f"FACELIB_ENCRYPTION_KEYS: key {key_id!r} is not base64") from exc
        if len(key) != 32:
            raise SettingsError(f"FACELIB_ENCRYPTION_KEYS: key {key_id!r} must be 32 bytes")
        keys[key_id.strip()] = key
    if keys.get(current_id, current) != current:
        raise SettingsError(
            f"FACELIB_ENCRYPTION_KEYS gives id {current_id!r} another key than"
            " FACELIB_ENCRYPTION_KEY"
        )
    keys[current_id] = current
    return keys


def _schedule(raw: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(x)) for x in raw.split(",") if x.strip())
    except ValueError as exc:
        raise SettingsError("FACELIB_CALLBACK_SCHEDULE must be comma-separated seconds") from exc
    if not values:
        raise SettingsError("FACELIB_CALLBACK_SCHEDULE must list at least one delay")
    return values


def _allowlist(raw: str) -> tuple[str, ...]:
    """FACELIB_FETCH_ALLOWLIST: comma-separated host names, IP addresses or CIDRs."""
    from shared.safe_fetch import parse_allowlist

    entries = tuple(n for n in (e.strip().lower().rstrip(".") for e in raw.split(",")) if n)
    try:
        parse_allowlist(entries)
    except ValueError as exc:
        raise SettingsError(f"FACELIB_FETCH_ALLOWLIST: {exc}") from None
    return entries


def _callback_allowlist(raw: str) -> tuple[str, ...]:
    """FACELIB_CALLBACK_ALLOWLIST: comma-separated name, IP or CIDR, each optionally :port."""
    from shared.callbacks import parse_allowlist

    entries = tuple(e.strip() for e in raw.split(",") if e.strip())
    try:
        parse_allowlist(entries)
    except ValueError as exc:
        raise SettingsError(f"FACELIB_CALLBACK_ALLOWLIST: {exc}") from None
    return entries


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise SettingsError(f"{name} must be at least 1, got {value}")
    return value


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
    models = _models()
    match_model = match_model_name()
    if match_model != "dlib" and match_model not in models:
        models = (*models, match_model)  # the deciding model is always computed
    encryption_key = _key("FACELIB_ENCRYPTION_KEY")
    encryption_key_id = _env("FACELIB_ENCRYPTION_KEY_ID", "k1") or "k1"
    home = facelib_home()
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        index_key=_key("FACELIB_INDEX_KEY"),
        encryption_key=encryption_key,
        encryption_key_id=encryption_key_id,
        encryption_keys=_encryption_keys(encryption_key_id, encryption_key),
        bind_host=_env("FACELIB_BIND", "127.0.0.1") or "127.0.0.1",
        port=_int("FACELIB_PORT", 7007),
        token_ttl_seconds=_int("FACELIB_TOKEN_TTL_SECONDS", 24 * 3600),
        sync_timeout_seconds=_float("FACELIB_SYNC_TIMEOUT_SECONDS", 30.0),
        job_max_attempts=_int("FACELIB_JOB_MAX_ATTEMPTS", 3),
        job_time_limit_seconds=_int("FACELIB_JOB_TIME_LIMIT_SECONDS", 120),
        faces_per_person=_int("FACELIB_FACES_PER_PERSON", 10),
        match_threshold=_float("FACELIB_MATCH_THRESHOLD", 70.0),
        match_mode=_choice("FACELIB_MATCH_MODE", "gallery", ("gallery", "seed")),
        gallery_target=_float("FACELIB_GALLERY_TARGET", 0.01),
        duplicate_policy=_choice("FACELIB_DUPLICATE_POLICY", "refuse", ("refuse", "warn", "allow")),
        duplicate_score=_float("FACELIB_DUPLICATE_SCORE", 80.0),
        max_base64_bytes=_int("FACELIB_MAX_BASE64_BYTES", 400 * 1024),
        max_request_bytes=_int("FACELIB_MAX_REQUEST_BYTES", 1024 * 1024),
        max_image_pixels=_int("FACELIB_MAX_IMAGE_PIXELS", 25_000_000),
        max_decode_bytes=_int("FACELIB_MAX_DECODE_BYTES", 192 * 1024 * 1024),
        decode_concurrency=_positive(
            "FACELIB_DECODE_CONCURRENCY", _int("FACELIB_DECODE_CONCURRENCY", 2)
        ),
        decode_wait_seconds=_float("FACELIB_DECODE_WAIT_SECONDS", 5.0),
        min_face_px=_int("FACELIB_MIN_FACE_PX", 80),
        embedding_backend=_choice("FACELIB_EMBEDDING_BACKEND", "onnx", ("onnx", "dlib")),
        backend_threads=_int("FACELIB_BACKEND_THREADS", 1),
        num_jitters=_int("FACELIB_NUM_JITTERS", 0),
        hnsw_ef_search=_int("FACELIB_HNSW_EF_SEARCH", 100),
        exact_search_max=_int("FACELIB_EXACT_SEARCH_MAX", 20_000),
        callback_schedule=_schedule(
            _env("FACELIB_CALLBACK_SCHEDULE", DEFAULT_CALLBACK_SCHEDULE) or ""
        ),
        callback_timeout_seconds=_float("FACELIB_CALLBACK_TIMEOUT_SECONDS", 10.0),
        callback_allow_private=_bool("FACELIB_CALLBACK_ALLOW_PRIVATE", False),
        callback_allowlist=_callback_allowlist(_env("FACELIB_CALLBACK_ALLOWLIST", "") or ""),
        callback_concurrency=_positive(
            "FACELIB_CALLBACK_CONCURRENCY", _int("FACELIB_CALLBACK_CONCURRENCY", 4)
        ),
        sweep_interval_seconds=_float("FACELIB_SWEEP_INTERVAL_SECONDS", 5.0),
        queue_max_depth=_int("FACELIB_QUEUE_MAX_DEPTH", 10_000),
        rate_limit=_rate_limit("FACELIB_RATE_LIMIT", "50/second;1000/minute"),
        unauth_rate_limit=_rate_limit("FACELIB_UNAUTH_RATE_LIMIT", "30/minute"),
        token_key_rate_limit=_rate_limit("FACELIB_TOKEN_KEY_RATE_LIMIT", "10/minute"),
        metrics_token=_env("FACELIB_METRICS_TOKEN"),
        metrics_cache_seconds=_float("FACELIB_METRICS_CACHE_SECONDS", 15.0),
        log_level=_env("FACELIB_LOG_LEVEL", "INFO") or "INFO",
        prometheus_multiproc_dir=_env("PROMETHEUS_MULTIPROC_DIR"),
        home=home,
        redis_port=redis_port(),
        pg_memory_mb=pg_memory_mb(),
        worker_concurrency=_int("FACELIB_WORKER_CONCURRENCY", 2),
        files_dir=_env("FACELIB_FILES_DIR") or str(home / "files"),
        file_store=_choice("FACELIB_FILE_STORE", "local", ("local", "s3")),
        s3_endpoint_url=_env("FACELIB_S3_ENDPOINT_URL"),
        s3_bucket=_env("FACELIB_S3_BUCKET", "facelib-files") or "facelib-files",
        s3_region=_env("FACELIB_S3_REGION", "us-east-1") or "us-east-1",
        s3_access_key=_env("FACELIB_S3_ACCESS_KEY"),
        s3_secret_key=_env("FACELIB_S3_SECRET_KEY"),
        upload_max_bytes=_int("FACELIB_UPLOAD_MAX_BYTES", 10 * 1024 * 1024),
        upload_max_side=_int("FACELIB_UPLOAD_MAX_SIDE", 1280),
        upload_jpeg_quality=_int("FACELIB_UPLOAD_JPEG_QUALITY", 90),
        file_retention_days=_float("FACELIB_FILE_RETENTION_DAYS", 30.0),
        job_send_timeout_seconds=_float("FACELIB_JOB_SEND_TIMEOUT_SECONDS", 60.0),
        job_max_lost_attempts=_int("FACELIB_JOB_MAX_LOST_ATTEMPTS", 5),
        db_pool_timeout_seconds=_float("FACELIB_DB_POOL_TIMEOUT_SECONDS", 0.5),
        jobs_retention_days=_float("FACELIB_JOBS_RETENTION_DAYS", 30.0),
        # the audit trail is a legal record: never kept less than AUDIT_MIN_RETENTION_DAYS
        audit_retention_days=max(
            AUDIT_MIN_RETENTION_DAYS, _float("FACELIB_AUDIT_RETENTION_DAYS", 1825.0)
        ),
        callback_attempts_retention_days=_float("FACELIB_CALLBACK_ATTEMPTS_RETENTION_DAYS", 90.0),
        fetch_allowlist=_allowlist(_env("FACELIB_FETCH_ALLOWLIST", "") or ""),
        fetch_max_bytes=_int("FACELIB_FETCH_MAX_BYTES", 10 * 1024 * 1024),
        fetch_timeout_seconds=_float("FACELIB_FETCH_TIMEOUT_SECONDS", 10.0),
        models=models,
        match_model=match_model,
        keep_enrolment_photos=_bool("FACELIB_KEEP_ENROLMENT_PHOTOS", False),
        hnsw_ef_per_million=_int("FACELIB_HNSW_EF_PER_MILLION", 400),
        hnsw_ef_max=_int("FACELIB_HNSW_EF_MAX", 400),
        search_partition_faces=_int("FACELIB_SEARCH_PARTITION_FACES", 250_000),
        hnsw_m=_int("FACELIB_HNSW_M", 32),
        hnsw_ef_construction=_int("FACELIB_HNSW_EF_CONSTRUCTION", 64),
        db_pool_size=_int("FACELIB_DB_POOL_SIZE", 10),
        model_cache_dir=_env("FACELIB_MODEL_CACHE"),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
