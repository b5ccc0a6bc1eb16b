"""The Celery worker application: `celery -A worker.celery_app worker`.

Models load once per worker process, after the fork (worker_process_init), never per task, and
only in workers that serve face jobs: the callbacks pool (`--queues callbacks`) never needs them.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import celeryd_after_setup, worker_process_init

from shared.db import close_pool
from shared.imaging import configure_decodes
from shared.logs import configure_logging
from shared.queue import QUEUE_FACES, make_celery
from shared.settings import get_settings

app = make_celery()
app.conf.include = ["worker.tasks", "worker.file_tasks"]

log = logging.getLogger(__name__)

_serves_faces = True  # until the worker says which queues it consumes


@celeryd_after_setup.connect
def _note_queues(instance: Any = None, **_: object) -> None:
    global _serves_faces
    try:
        queues = set(instance.app.amqp.queues.consume_from or ())
    except AttributeError:
        return
    if queues:
        _serves_faces = QUEUE_FACES in queues


@worker_process_init.connect
def _init_worker_process(**_: object) -> None:
    s = get_settings()
    configure_logging(s.log_level)
    configure_decodes(s.decode_concurrency, s.decode_wait_seconds)
    close_pool()  # never reuse the parent's connections in a forked child
    if _serves_faces:
        from worker.tasks import engine

        engine()  # load dlib models now, so the first job doesn't pay for it
    log.info("worker process ready (face models loaded: %s)", _serves_faces)
