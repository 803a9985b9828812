"""policy versions: every policy put in force, with its files (the last good policy)

A process that starts while the policy files on disk do not validate serves the most recently
loaded version from this table instead of refusing to start (issue 12: one bad file and a
worker restart took the whole web tier down). The rows also say what the policy version named
by an audit event contained.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("source_dir", sa.String(length=1024), nullable=False),
        sa.Column("first_loaded_at", sa.DateTime(), nullable=False),
        sa.Column("last_loaded_at", sa.DateTime(), nullable=False),
        sa.Column("loaded_by", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_index(
        op.f("ix_policy_versions_last_loaded_at"),
        "policy_versions",
        ["last_loaded_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_policy_versions_last_loaded_at"), table_name="policy_versions")
    op.drop_table("policy_versions")
