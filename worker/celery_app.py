"""The Celery worker application: `celery -A worker.celery_app worker`.

Models load once per worker process, after the fork (worker_process_init), never per task.
"""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from shared.db import close_pool
from shared.logs import configure_logging
from shared.queue import make_celery
from shared.settings import get_settings

app = make_celery()
app.conf.include = ["worker.tasks", "worker.file_tasks"]

log = logging.getLogger(__name__)


@worker_process_init.connect
def _init_worker_process(**_: object) -> None:
    configure_logging(get_settings().log_level)
    close_pool()  # never reuse the parent's connections in a forked child
    from worker.tasks import engine

    engine()  # load dlib models now, so the first job doesn't pay for it
