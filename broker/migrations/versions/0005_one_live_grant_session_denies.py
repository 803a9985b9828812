"""one live grant per person and entitlement; session-scope denies

Two fixes from fault injection (issue 12):

- Parallel first issuances could give one person two active grants for the same entitlement, and
  revoking one left the other live. A partial unique index now allows one live ('active' or
  'pending') grant per person and entitlement. Duplicates already in the database (that race,
  or two principals merged by 0004) are resolved, not refused, so an upgrade never needs a
  person at the console: per person and entitlement the grant that is active and ends last is
  kept (a pending request yields to an active grant; ties go to the newest), and the others are
  revoked, each with a `grant.revoked` audit event naming the grant kept. Their live sessions,
  if any, are denied by the scheduler's reconcile pass (a session whose grant is no longer
  active gets a deny), the same path that covers any other ended grant.
- A session AWS may have made without the broker recording it (AssumeRole's answer lost) is
  denied by its RoleSessionName: revocations gain `role_session_name`, and an index on
  (status, created_at) lets the scheduler find issuances that never finished.

SQLite: plain ADD COLUMN and CREATE INDEX, no batch rebuild (principals and grants have
foreign keys pointing at them).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ACTOR = "migration:0005"
LIVE = "status IN ('active', 'pending')"
REASON = (
    "one live grant per person and entitlement: a duplicate ended when the database started "
    "enforcing it"
)

_grants = sa.table(
    "grants",
    sa.column("id", sa.String()),
    sa.column("principal_id", sa.String()),
    sa.column("entitlement_id", sa.String()),
    sa.column("role_arn", sa.String()),
    sa.column("status", sa.String()),
    sa.column("created_at", sa.DateTime()),
    sa.column("expires_at", sa.DateTime()),
    sa.column("ended_at", sa.DateTime()),
    sa.column("ended_by", sa.String()),
    sa.column("end_reason", sa.Text()),
)
_principals = sa.table("principals", sa.column("id", sa.String()), sa.column("email", sa.String()))
_sessions = sa.table(
    "sessions", sa.column("grant_id", sa.String()), sa.column("expires_at", sa.DateTime())
)


def upgrade() -> None:
    op.add_column("revocations", sa.Column("role_session_name", sa.String(64), nullable=True))
    op.create_index("ix_revocations_status_created", "revocations", ["status", "created_at"])
    _end_duplicates(op.get_bind())
    op.create_index(
        "ux_grants_one_live_per_entitlement",
        "grants",
        ["principal_id", "entitlement_id"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )


def downgrade() -> None:
    op.drop_index("ux_grants_one_live_per_entitlement", table_name="grants")
    # Older code knows no standby rows and no session scope: drop the first, and widen the
    # second to the session's grant (it denies more, never less).
    op.execute("DELETE FROM revocations WHERE status = 'standby'")
    op.execute("UPDATE revocations SET scope = 'grant' WHERE scope = 'session'")
    op.drop_index("ix_revocations_status_created", table_name="revocations")
    with op.batch_alter_table("revocations") as batch_op:  # nothing references revocations
        batch_op.drop_column("role_session_name")


def _keep_order(row: Any) -> tuple[bool, datetime, datetime, str]:
    """The grant to keep sorts last: active, ends last, newest."""
    never = datetime.min
    return (row.status == "active", row.expires_at or never, row.created_at or never, row.id)


def _end_duplicates(conn: sa.Connection) -> None:
    rows = conn.execute(
        sa.select(_grants, _principals.c.email)
        .join(_principals, _principals.c.id == _grants.c.principal_id)
        .where(_grants.c.status.in_(("active", "pending")))
    ).all()
    live: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        live[(row.principal_id, row.entitlement_id)].append(row)
    now = datetime.now(UTC).replace(tzinfo=None)
    for group in live.values():
        if len(group) < 2:
            continue
        *ended, kept = sorted(group, key=_keep_order)
        for row in ended:
            conn.execute(
                _grants.update()
                .where(_grants.c.id == row.id)
                .values(status="revoked", ended_at=now, ended_by=ACTOR, end_reason=REASON)
            )
            live_sessions = conn.scalar(
                sa.select(sa.func.count())
                .select_from(_sessions)
                .where(_sessions.c.grant_id == row.id, _sessions.c.expires_at > now)
            )
            _audit(conn, row, kept, int(live_sessions or 0))


def _audit(conn: sa.Connection, row: Any, kept: Any, live_sessions: int) -> None:
    from sqlalchemy.orm import Session

    from broker.audit import AuditLog, EventContext, NewEvent

    session = Session(bind=conn)
    AuditLog().append(
        session,
        EventContext(actor=ACTOR, client="cli"),
        NewEvent(
            "grant.revoked",
            target=row.entitlement_id,
            decision="revoke",
            reason=REASON,
            details={
                "grant_id": row.id,
                "person": row.email,
                "role_arn": row.role_arn,
                "was": row.status,
                "kept_grant_id": kept.id,
                "live_sessions": live_sessions,
                "revocations": [],  # live sessions are denied by the scheduler's reconcile
            },
        ),
    )
    session.flush()
