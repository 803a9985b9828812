"""Cross-process mutual exclusion on PostgreSQL: advisory locks keyed by a name.

Several scheduler processes may run against one PostgreSQL database; a job that must happen
once (apply one role's revocation policy, reconcile) takes a transaction-scoped advisory lock
and skips its work when another process holds it. The lock dies with the transaction or the
connection, so a killed process never leaves one behind. On SQLite the scheduler is a
singleton (see :mod:`broker.scheduler.lease`) and every write transaction is `BEGIN
IMMEDIATE`, so these helpers always report the lock as held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.orm import Session

from broker.db import Database


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def try_xact_lock(session: Session, name: str) -> bool:
    """Take ``name``'s advisory lock for the session's transaction; False if another holds it."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    got = session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key(name)})
    return bool(got.scalar())


@contextmanager
def advisory_lock(database: Database, name: str) -> Iterator[bool]:
    """Hold ``name``'s advisory lock on a connection of its own while the block runs.

    Yields whether the lock was obtained. The work inside uses its own short transactions;
    the lock's transaction only holds the lock (and rolls back at the end).
    """
    if database.dialect != "postgresql":
        yield True
        return
    with database.engine.connect() as conn, conn.begin():
        got = conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": lock_key(name)})
        yield bool(got.scalar())
