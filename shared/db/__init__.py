"""The database layer: the only code that runs SQL.

`pool` holds the process's connection pool and `transaction()`; `migrate` applies `sql/`;
`bootstrap` creates and sizes the embedded PostgreSQL's database. Each repository module reads
and writes one group of tables and says which in its docstring:

    clients      api_clients, api_tokens
    jobs         jobs, job_inputs
    persons      persons
    faces        faces, face_photos (and the bulk path's COPY)
    search       nearest faces, gallery counts, the search index
    libraries    libraries, person_libraries
    deliveries   callback_deliveries, callback_attempts
    files        files
    audit        audit_log
    ops          retention purge, metrics aggregates, readiness

Every repository function takes an open connection, so the caller decides the transaction:

    from shared import db
    from shared.db import transaction

    with transaction() as conn:
        client = db.clients.authenticate(conn, token)
"""

from shared.db import (
    audit,
    clients,
    deliveries,
    faces,
    files,
    jobs,
    libraries,
    ops,
    persons,
    search,
)
from shared.db.pool import DatabaseUnavailable, close_pool, get_pool, transaction

__all__ = [
    "DatabaseUnavailable",
    "close_pool",
    "get_pool",
    "transaction",
    "audit",
    "clients",
    "deliveries",
    "faces",
    "files",
    "jobs",
    "libraries",
    "ops",
    "persons",
    "search",
]
