"""The Celery worker application: `celery -A worker.celery_app worker`.

- Models load once, in the main process before the pool forks (`worker_init`); each pool
  process adopts them copy-on-write (`worker_process_init`), so a new child is up in
  milliseconds, not after a model load that can outlast Celery's start-up timeout under load.
  Only workers that serve face jobs load them: the callbacks pool (`--queues callbacks`) never
  needs them.
- Logging: Celery does not configure logging (`setup_logging` is connected); every process,
  pool children included, writes our JSON lines to the real stderr.
- Broker restarts: a guard around kombu's restore of unacknowledged messages on channel close,
  its ack and its requeue (see `_guard_kombu_restore_unacked`), so a Redis restart never kills
  the worker.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from celery.signals import setup_logging, worker_init, worker_process_init

from shared.db import close_pool
from shared.imaging import configure_decodes
from shared.logs import configure_logging
from shared.queue import QUEUE_FACES, make_celery
from shared.settings import get_settings

app = make_celery()
app.conf.include = ["worker.tasks", "worker.file_tasks"]

log = logging.getLogger(__name__)

_serves_faces = True  # until the worker says which queues it consumes


def _configure_logging() -> None:
    configure_logging(get_settings().log_level)
    # Celery's stdout/stderr redirection may have replaced sys.stderr with a proxy that logs
    # back into the root logger; our handler must write to the process's real stderr
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.__stderr__)


@setup_logging.connect
def _setup_logging(**_: object) -> None:
    """Connected, so Celery leaves the root logger to us (JSON lines on stderr)."""
    _configure_logging()


def _guard_kombu_restore_unacked() -> None:
    """Keep the worker alive when Redis goes away (issue #12 item 4).

    kombu 5.7.0 (the newest release when this was written; no upstream fix yet) restores the
    channel's unacknowledged messages when the channel closes. When the close follows a lost
    connection, the transport's `client` is already None, and building a Redis client for the
    restore raises `AttributeError: 'NoneType' object has no attribute 'hostname'` in
    `_connparams`, which Celery treats as unrecoverable: the worker exits. With Redis gone the
    restore cannot succeed anyway; the messages stay in Redis's unacked set (restored after the
    visibility timeout), and each job's Postgres send deadline or lease re-sends it sooner. So
    the restore is skipped, with a warning, when the connection is gone or Redis is down.
    """
    import redis
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.QoS.restore_unacked
    if getattr(original, "_facelib_guarded", False):
        return

    def restore_unacked(self: kombu_redis.QoS, client: object = None) -> None:
        connection = getattr(self.channel, "connection", None)
        if client is None and (connection is None or getattr(connection, "client", None) is None):
            log.warning(
                "broker connection gone: %d unacked message(s) left to the visibility timeout"
                " and the sweeper",
                len(self._delivered),
            )
            self._delivered.clear()
            return
        try:
            original(self, client)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("could not restore unacked messages (%s)", type(exc).__name__)
            self._delivered.clear()

    restore_unacked._facelib_guarded = True  # type: ignore[attr-defined]
    kombu_redis.QoS.restore_unacked = restore_unacked  # type: ignore[method-assign]

    # The same crash on the two other paths that build a client from a closed channel: the ack
    # of a message whose task finished while Redis was away, and a requeue. The message stays
    # in Redis's unacked set and comes back after the visibility timeout; its job is finished
    # (or re-sent) by Postgres, and a redelivery of a finished job is refused by its claim.
    original_ack = kombu_redis.QoS.ack
    original_restore_by_tag = kombu_redis.QoS.restore_by_tag

    def _connection_gone(qos: kombu_redis.QoS) -> bool:
        connection = getattr(qos.channel, "connection", None)
        return connection is None or getattr(connection, "client", None) is None

    def ack(self: kombu_redis.QoS, delivery_tag: object) -> None:
        if _connection_gone(self):
            log.warning("broker connection gone: an ack is left to the visibility timeout")
            super(kombu_redis.QoS, self).ack(delivery_tag)  # local bookkeeping only
            return
        original_ack(self, delivery_tag)

    def restore_by_tag(self: kombu_redis.QoS, tag: object, *args: object, **kw: object) -> None:
        if _connection_gone(self):
            log.warning("broker connection gone: a requeue is left to the visibility timeout")
            return
        original_restore_by_tag(self, tag, *args, **kw)

    kombu_redis.QoS.ack = ack  # type: ignore[method-assign]
    kombu_redis.QoS.restore_by_tag = restore_by_tag  # type: ignore[method-assign]


_guard_kombu_restore_unacked()


def _consumes_faces(worker: Any) -> bool:
    """Whether this worker serves the faces queue (its queues are set before worker_init)."""
    try:
        queues = set(worker.app.amqp.queues.consume_from or ())
    except AttributeError:
        return True
    return not queues or QUEUE_FACES in queues


@worker_init.connect
def _load_models_before_fork(sender: Any = None, **_: object) -> None:
    """In the main process, before the pool forks: load the face models once."""
    global _serves_faces
    _configure_logging()
    _serves_faces = _consumes_faces(sender)
    if not _serves_faces:
        log.info("face models not loaded: this worker does not serve face jobs")
        return
    from worker.tasks import engine

    t = time.monotonic()
    engine()
    log.info("face models loaded in the main process in %.2f s", time.monotonic() - t)


@worker_process_init.connect
def _init_worker_process(**_: object) -> None:
    t = time.monotonic()
    s = get_settings()
    _configure_logging()
    configure_decodes(s.decode_concurrency, s.decode_wait_seconds)
    close_pool()  # never reuse the parent's connections in a forked child
    models = "none (no face jobs here)"
    if _serves_faces:
        from worker.engine.engine import adopt_parent_engines
        from worker.tasks import engine

        adopted = adopt_parent_engines()
        engine()  # a no-op when adopted; otherwise (models not preloaded) loads them now
        models = "shared from the main process" if adopted else "loaded"
    log.info("pool process ready in %.1f ms (models %s)", (time.monotonic() - t) * 1000, models)
