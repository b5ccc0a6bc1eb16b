"""The database layer: the only code that runs SQL.

`pool` holds the process's connection pool and `transaction()`; `migrate` applies `sql/`;
each repository module reads and writes one group of tables, and says which in its docstring.
Every repository function takes an open connection, so the caller decides the transaction:

    from shared.db import transaction

    with transaction() as conn:
        ...
"""

# the repositories, so that `from shared import db` reaches them all: db.clients.authenticate(...)
from shared.db import audit, clients, deliveries, files, jobs, libraries, ops
from shared.db.pool import DatabaseUnavailable, close_pool, get_pool, transaction

__all__ = [
    "DatabaseUnavailable",
    "close_pool",
    "get_pool",
    "transaction",
    "audit",
    "clients",
    "deliveries",
    "files",
    "jobs",
    "libraries",
    "ops",
]
