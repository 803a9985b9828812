"""activity: CloudTrail files and cursors, attributed records, detections, notification outbox

Issue 16 (watch what the credentials do): CloudTrail log files are claimed once across
schedulers (a unique row per bucket and key), prefixes keep a durable cursor, records made with
broker-issued credentials are stored compactly with their person and grant, each detection rule
fires once per record, and notifications wait in an outbox the scheduler delivers from.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cloudtrail_files",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("bucket", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("claim_token", sa.String(length=32), nullable=False),
        sa.Column("claimed_by", sa.String(length=255), nullable=False),
        sa.Column("claimed_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("done_at", sa.DateTime(), nullable=True),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("attributed", sa.Integer(), nullable=False),
        sa.Column("bad_records", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bucket", "key"),
    )
    op.create_index(
        "ix_cloudtrail_files_status_claimed",
        "cloudtrail_files",
        ["status", "claimed_at"],
        unique=False,
    )
    op.create_table(
        "activity_cursors",
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("position", sa.String(length=1024), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "activity_records",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_time", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=160), nullable=False),
        sa.Column("aws_region", sa.String(length=32), nullable=True),
        sa.Column("account_id", sa.String(length=12), nullable=True),
        sa.Column("source_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.Column("error_code", sa.String(length=128), nullable=True),
        sa.Column("access_key_id", sa.String(length=128), nullable=True),
        sa.Column("matched_by", sa.String(length=16), nullable=False),
        sa.Column("principal_id", sa.String(length=32), nullable=False),
        sa.Column("grant_id", sa.String(length=32), nullable=True),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("entitlement_id", sa.String(length=64), nullable=True),
        sa.Column("role_arn", sa.String(length=2048), nullable=True),
        sa.Column("after_grant_end", sa.Boolean(), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("file_id", BIGINT_ID, nullable=True),
        sa.Column("record", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(
        op.f("ix_activity_records_access_key_id"),
        "activity_records",
        ["access_key_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_activity_records_event_time"), "activity_records", ["event_time"], unique=False
    )
    op.create_index(
        "ix_activity_records_grant_time",
        "activity_records",
        ["grant_id", "event_time"],
        unique=False,
    )
    op.create_index(
        "ix_activity_records_principal_time",
        "activity_records",
        ["principal_id", "event_time"],
        unique=False,
    )
    op.create_index(
        "ix_activity_records_session_time",
        "activity_records",
        ["session_id", "event_time"],
        unique=False,
    )
    op.create_table(
        "detections",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("response", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_time", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=160), nullable=False),
        sa.Column("detected_at", sa.DateTime(), nullable=False),
        sa.Column("principal_id", sa.String(length=32), nullable=True),
        sa.Column("grant_id", sa.String(length=32), nullable=True),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rule_id", "event_id"),
    )
    op.create_index(op.f("ix_detections_detected_at"), "detections", ["detected_at"], unique=False)
    op.create_index(
        op.f("ix_detections_principal_id"), "detections", ["principal_id"], unique=False
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("dedupe_key", sa.String(length=255), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedupe_key"),
    )
    op.create_index(
        "ix_notifications_status_next",
        "notifications",
        ["status", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_status_next", table_name="notifications")
    op.drop_table("notifications")
    op.drop_index(op.f("ix_detections_principal_id"), table_name="detections")
    op.drop_index(op.f("ix_detections_detected_at"), table_name="detections")
    op.drop_table("detections")
    op.drop_index("ix_activity_records_session_time", table_name="activity_records")
    op.drop_index("ix_activity_records_principal_time", table_name="activity_records")
    op.drop_index("ix_activity_records_grant_time", table_name="activity_records")
    op.drop_index(op.f("ix_activity_records_event_time"), table_name="activity_records")
    op.drop_index(op.f("ix_activity_records_access_key_id"), table_name="activity_records")
    op.drop_table("activity_records")
    op.drop_table("activity_cursors")
    op.drop_index("ix_cloudtrail_files_status_claimed", table_name="cloudtrail_files")
    op.drop_table("cloudtrail_files")
