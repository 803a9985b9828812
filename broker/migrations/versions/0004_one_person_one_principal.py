"""one principal per person: fresh-claim columns, duplicates merged

Until now `broker token mint` created a principal with subject = email while web and device
sign-in used the provider's `sub`, so one person could be two principals (and approve their own
request). This revision adds the columns for provider-fresh claims and merges every group of
principals that share an issuer and an email into one: the one holding the provider's subject
(else the oldest). Grants, sessions, tokens and web sessions move to it; it is disabled if any
of the merged rows was; each merge is recorded in the audit trail.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Tables whose principal_id points at principals.id (foreign key or plain column).
_REFERENCING = ("grants", "sessions", "api_tokens", "web_sessions", "device_authorizations")
_LOOSE = ("revocations",)


def upgrade() -> None:
    # Plain ADD COLUMN (NOT NULL with a default): SQLite adds columns in place this way, where a
    # batch rebuild would have to drop a table that foreign keys point at.
    op.add_column(
        "principals",
        sa.Column("claims", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
    )
    op.add_column("principals", sa.Column("claims_at", sa.DateTime(), nullable=True))
    op.add_column("principals", sa.Column("idp_tokens", sa.Text(), nullable=True))
    op.add_column("principals", sa.Column("signed_out_at", sa.DateTime(), nullable=True))
    conn = op.get_bind()
    _backfill_claims(conn)
    _merge_duplicates(conn)


def downgrade() -> None:
    with op.batch_alter_table("principals") as batch_op:
        batch_op.drop_column("signed_out_at")
        batch_op.drop_column("idp_tokens")
        batch_op.drop_column("claims_at")
        batch_op.drop_column("claims")


def _backfill_claims(conn: sa.Connection) -> None:
    """Existing rows get their stored attributes as claims, dated never (so: refreshed first)."""
    rows = conn.execute(sa.text("SELECT id, email, groups, display_name FROM principals")).all()
    principals = sa.table("principals", sa.column("id"), sa.column("claims", sa.JSON()))
    for row in rows:
        groups = row.groups
        if isinstance(groups, str):  # a raw query hands JSON back as text
            groups = json.loads(groups)
        claims: dict[str, Any] = {"email": row.email, "groups": list(groups or [])}
        if row.display_name:
            claims["name"] = row.display_name
        conn.execute(principals.update().where(principals.c.id == row.id).values(claims=claims))


def _merge_duplicates(conn: sa.Connection) -> None:
    rows = conn.execute(
        sa.text(
            "SELECT id, issuer, subject, email, disabled, disabled_reason, created_at "
            "FROM principals ORDER BY created_at, id"
        )
    ).all()
    people: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        people[(row.issuer, row.email.lower())].append(row)
    for (issuer, email), group in people.items():
        if len(group) < 2:
            continue
        # The provider's subject is the person; an admin-minted row used the email instead.
        provider_rows = [r for r in group if r.subject.lower() != email]
        keep = (provider_rows or group)[0]
        merged = [r for r in group if r.id != keep.id]
        merged_ids = [r.id for r in merged]
        moved = {}
        for table in (*_REFERENCING, *_LOOSE):
            result = conn.execute(
                sa.text(f"UPDATE {table} SET principal_id = :keep WHERE principal_id IN :ids")  # noqa: S608 - fixed table names
                .bindparams(sa.bindparam("ids", expanding=True))
                .bindparams(keep=keep.id, ids=merged_ids)
            )
            moved[table] = int(result.rowcount or 0)
        disabled = [r for r in group if r.disabled]
        if disabled:
            reason = disabled[0].disabled_reason or "cut off before the merge"
            conn.execute(
                sa.text(
                    "UPDATE principals SET disabled = :yes, disabled_reason = :reason "
                    "WHERE id = :keep"
                ),
                {"yes": True, "reason": reason, "keep": keep.id},
            )
        conn.execute(
            sa.text("DELETE FROM principals WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": merged_ids},
        )
        _audit_merge(conn, issuer, email, keep, merged, moved)


def _audit_merge(
    conn: sa.Connection,
    issuer: str,
    email: str,
    keep: Any,
    merged: list[Any],
    moved: dict[str, int],
) -> None:
    from sqlalchemy.orm import Session

    from broker.audit import AuditLog, EventContext, NewEvent

    session = Session(bind=conn)
    AuditLog().append(
        session,
        EventContext(actor="migration:0004", client="cli"),
        NewEvent(
            "principal.merge",
            target=email,
            decision="allow",
            reason="one person, one principal: rows with the same issuer and email merged",
            details={
                "issuer": issuer,
                "kept": {"principal_id": keep.id, "subject": keep.subject},
                "merged": [{"principal_id": r.id, "subject": r.subject} for r in merged],
                "moved": moved,
            },
        ),
    )
    session.flush()
