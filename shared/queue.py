"""The Celery application object shared by the API (to send tasks) and the workers.

The API only sends tasks by their stable names (`TASK_*`), so it never imports the worker code
or dlib. Broker settings follow the at-least-once discipline: late acks, prefetch 1, reject on
worker loss, a visibility timeout longer than the longest job; every task is idempotent on its
job id, so a redelivery is harmless.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

from shared.settings import get_settings

TASK_REGISTER = "faces.register"
TASK_RECOGNIZE = "faces.recognize"
TASK_VERIFY = "faces.verify"
TASK_DELIVER_CALLBACK = "callbacks.deliver"
TASK_SWEEP = "jobs.sweep"
TASK_PURGE_FILES = "files.purge"
TASK_PURGE_EXPIRED = "retention.purge"

QUEUE_FACES = "faces"
# Sync calls (a teller waiting at the counter) go to their own queue, which the face workers
# always empty first (queue_order_strategy "priority" below): their latency does not depend on
# how many async jobs wait in QUEUE_FACES.
QUEUE_FACES_SYNC = "faces-sync"
QUEUE_CALLBACKS = "callbacks"
# what a face-jobs worker consumes, in priority order
FACE_QUEUES = f"{QUEUE_FACES_SYNC},{QUEUE_FACES}"

TASK_FOR_KIND = {"register": TASK_REGISTER, "recognize": TASK_RECOGNIZE, "verify": TASK_VERIFY}


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("facelib", broker=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in Postgres (jobs.result), not in Redis
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_seconds + 30,
        task_soft_time_limit=settings.job_time_limit_seconds,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # must exceed the longest job, or Redis re-delivers a job still running
            "visibility_timeout": max(600, 4 * settings.job_time_limit_seconds),
            "socket_timeout": 10,
            "socket_connect_timeout": 10,
            # consume a worker's queues in the order given (FACE_QUEUES: sync first) instead of
            # round robin; with prefetch 1, a freed pool process takes the next sync job first
            "queue_order_strategy": "priority",
        },
        task_routes={
            TASK_REGISTER: {"queue": QUEUE_FACES},
            TASK_RECOGNIZE: {"queue": QUEUE_FACES},
            TASK_VERIFY: {"queue": QUEUE_FACES},
            TASK_DELIVER_CALLBACK: {"queue": QUEUE_CALLBACKS},
            TASK_SWEEP: {"queue": QUEUE_CALLBACKS},
            TASK_PURGE_FILES: {"queue": QUEUE_CALLBACKS},
            TASK_PURGE_EXPIRED: {"queue": QUEUE_CALLBACKS},
        },
        task_default_queue=QUEUE_FACES,
        beat_schedule={
            "sweep": {"task": TASK_SWEEP, "schedule": settings.sweep_interval_seconds},
            "purge-files": {"task": TASK_PURGE_FILES, "schedule": 3600.0},
            "purge-expired": {"task": TASK_PURGE_EXPIRED, "schedule": 3600.0},
        },
        worker_hijack_root_logger=False,
        # our JSON logging writes to the real stderr (worker.celery_app): no stdout proxying
        worker_redirect_stdouts=False,
        # models are shared from the main process, so a child is up in milliseconds; the
        # margin covers a fork on a machine under heavy load (Celery's default is 4 s)
        worker_proc_alive_timeout=30.0,
        worker_send_task_events=True,
        # no "task-sent" event per publish: a second Redis publish (and client) on every
        # accepted job, 5-10% of the API's CPU per async submission (docs/scaling.md); monitors
        # such as Flower see a task from its worker's "task-received" on, and the queue depth
        # is in /metrics
        task_send_sent_event=False,
    )
    return app


_celery: Celery | None = None


def get_celery() -> Celery:
    global _celery
    if _celery is None:
        _celery = make_celery()
    return _celery


_redis: redis.Redis | None = None
_redis_pid: int | None = None


def get_redis() -> redis.Redis:
    """A Redis client for pub/sub (job completion), queue depth and rate limits."""
    global _redis, _redis_pid
    if _redis is None or _redis_pid != os.getpid():
        _redis = redis.Redis.from_url(
            get_settings().redis_url, socket_timeout=10, socket_connect_timeout=5
        )
        _redis_pid = os.getpid()
    return _redis


def job_channel(job_id: str) -> str:
    return f"facelib:job:{job_id}"


def queue_depth(queue: str = QUEUE_FACES) -> int:
    return int(get_redis().llen(queue))
