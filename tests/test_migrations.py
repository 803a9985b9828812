"""Migrations produce exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from broker.db import Database
from broker.migrate import current_revision
from broker.models import Base


def test_migrations_match_models(database: Database) -> None:
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert current_revision(database) is not None


def test_read_sessions_do_not_block_writers(database: Database) -> None:
    """A long read (an export, a page) must not hold the SQLite write lock."""
    from broker.audit import AuditLog, EventContext, NewEvent

    with database.read_session() as reader:
        reader.execute(sa.text("SELECT count(*) FROM audit_events")).scalar()
        with database.session() as writer:  # would wait for the busy timeout if the read locked
            AuditLog().append(writer, EventContext(), NewEvent(action="test.write"))
        assert reader.execute(sa.text("SELECT 1")).scalar() == 1
