"""Celery task of the file server: the retention purge, run by beat (`files.purge`).

Files that no job has used for FACELIB_FILE_RETENTION_DAYS, and that no waiting job refers to,
are deleted (rows, then stored objects no client holds any more). The task is idempotent: a
second run finds nothing left to purge.
"""

from __future__ import annotations

from shared.files.uploads import purge_unused_files
from shared.settings import get_settings
from worker.celery_app import app

TASK_PURGE_FILES = "files.purge"


@app.task(name=TASK_PURGE_FILES)
def purge_files() -> dict[str, int]:
    """Delete files past retention; returns the number of rows and stored objects removed."""
    return purge_unused_files(get_settings().file_retention_days)
