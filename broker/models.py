"""Database models: principals, grants, sessions, revocations, tokens and the audit chain.

Times are stored as UTC. No column ever holds an issued secret key or session token.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """The current time, UTC, timezone-aware."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random 32-hex-character identifier."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored naive-UTC and always returned timezone-aware (SQLite drops tz)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC times")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base for every broker table."""

    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class GrantStatus(StrEnum):
    """Grant life: pending → active → expired | revoked; pending → denied | lapsed."""

    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    DENIED = "denied"
    LAPSED = "lapsed"


class RevocationStatus(StrEnum):
    """A deny statement's state on AWS.

    ``standby``: written with the decision before an AssumeRole, never sent to AWS; deleted when
    the session is recorded, or armed (made ``pending``) when the call's outcome is lost.
    """

    STANDBY = "standby"
    PENDING = "pending"
    APPLIED = "applied"
    DROPPED = "dropped"


class Principal(Base):
    """A person as the identity provider knows them: (issuer, subject) is the person.

    Email and groups are attributes, refreshed from the provider; `source_identity` is derived
    once, when the row is created, and never changes (AWS sees it; revocations match on it).
    """

    __tablename__ = "principals"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(320), index=True)
    source_identity: Mapped[str] = mapped_column(String(64), index=True)
    display_name: Mapped[str | None] = mapped_column(String(255))
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    kind: Mapped[str] = mapped_column(String(16), default="staff")
    valid_until: Mapped[datetime | None]
    sponsor: Mapped[str | None] = mapped_column(String(320))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    claims: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The person's attributes as the provider last stated them (never authentication context)."""
    claims_at: Mapped[datetime | None]
    """When the provider last stated them: decisions refuse claims older than CLAIMS_MAX_AGE."""
    idp_tokens: Mapped[str | None] = mapped_column(Text)
    """The provider's access/refresh tokens, encrypted with a key derived from SECRET_KEY."""
    signed_out_at: Mapped[datetime | None]
    """ID tokens issued before this moment are no longer accepted as API bearers."""


LIVE_GRANT = "status IN ('active', 'pending')"
"""SQL for a grant that is still live: the database allows one per person and entitlement."""


class Grant(Base):
    """One person's permission to use one entitlement until a time."""

    __tablename__ = "grants"
    __table_args__ = (
        Index("ix_grants_status_expires", "status", "expires_at"),
        Index("ix_grants_principal_status", "principal_id", "status"),
        Index(
            "ux_grants_one_live_per_entitlement",
            "principal_id",
            "entitlement_id",
            unique=True,
            sqlite_where=text(LIVE_GRANT),
            postgresql_where=text(LIVE_GRANT),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"))
    entitlement_id: Mapped[str] = mapped_column(String(64))
    role_arn: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), default=GrantStatus.PENDING)
    reason: Mapped[str | None] = mapped_column(Text)
    duration_seconds: Mapped[int] = mapped_column(Integer)
    policy_version: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(16), default="api")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(320))
    decision_comment: Mapped[str | None] = mapped_column(Text)
    starts_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    ended_by: Mapped[str | None] = mapped_column(String(320))
    end_reason: Mapped[str | None] = mapped_column(Text)

    principal: Mapped[Principal] = relationship(lazy="joined", innerjoin=True)


class IssuedSession(Base):
    """One AssumeRole made under a grant. Never holds the secret key or session token."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    grant_id: Mapped[str] = mapped_column(ForeignKey("grants.id"), index=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    role_arn: Mapped[str] = mapped_column(String(2048), index=True)
    role_session_name: Mapped[str] = mapped_column(String(64), unique=True)
    source_identity: Mapped[str] = mapped_column(String(64))
    access_key_id: Mapped[str] = mapped_column(String(128))
    assumed_role_arn: Mapped[str] = mapped_column(String(2048))
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    client: Mapped[str] = mapped_column(String(16))
    source_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))


class Revocation(Base):
    """A deny the broker keeps in its inline policy on a role, until `drop_after`."""

    __tablename__ = "revocations"
    __table_args__ = (
        Index("ix_revocations_role_status", "role_arn", "status"),
        Index("ix_revocations_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    role_arn: Mapped[str] = mapped_column(String(2048))
    scope: Mapped[str] = mapped_column(String(16))  # grant | person | role | session
    source_identity: Mapped[str | None] = mapped_column(String(64))
    grant_id: Mapped[str | None] = mapped_column(String(32))
    role_session_name: Mapped[str | None] = mapped_column(String(64))
    """The one session a session-scope deny targets (``aws:userid`` = role id:this name)."""
    principal_id: Mapped[str | None] = mapped_column(String(32))
    cutoff: Mapped[datetime]
    drop_after: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default=RevocationStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None]


class ApiToken(Base):
    """A broker-issued opaque bearer token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))  # admin | device
    claims: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class AuditEvent(Base):
    """One link of the append-only, hash-chained audit trail."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ts: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(320), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(2048))
    decision: Mapped[str | None] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    client: Mapped[str | None] = mapped_column(String(16))
    policy_version: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditHead(Base):
    """The single chain head row; appends lock it, which serializes them across processes."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """An Ed25519 signature over the chain head at `seq`."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), index=True)
    hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime]
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class WebSession(Base):
    """A server-side browser session; the cookie carries only a random id (stored hashed)."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id"), index=True)
    claims: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None]


class LoginAttempt(Base):
    """One OIDC authorization request: state, nonce and PKCE verifier, usable once."""

    __tablename__ = "login_attempts"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(String(128))
    next_path: Mapped[str] = mapped_column(String(2048), default="/")
    browser_binding: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class DeviceAuthorization(Base):
    """An RFC 8628 device authorization: the CLI polls with the device code."""

    __tablename__ = "device_authorizations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    device_code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_code: Mapped[str] = mapped_column(String(16), unique=True)
    client_id: Mapped[str] = mapped_column(String(128))
    client_name: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    interval: Mapped[int] = mapped_column(Integer, default=5)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    last_polled_at: Mapped[datetime | None]
    principal_id: Mapped[str | None] = mapped_column(String(32))
    claims: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    requester_ip: Mapped[str | None] = mapped_column(String(64))
    requester_agent: Mapped[str | None] = mapped_column(String(512))
    decided_at: Mapped[datetime | None]


class RateLimitBucket(Base):
    """A fixed-window counter shared by every worker (key = what is limited and for whom)."""

    __tablename__ = "rate_limits"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_start: Mapped[datetime]
    count: Mapped[int] = mapped_column(Integer, default=0)


class SchedulerLease(Base):
    """Which scheduler process holds the singleton lease (SQLite refuses a second one)."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime]


class PolicyVersion(Base):
    """A policy version that validated and was put in force, with its files.

    Audit events name the policy version they were decided under; this table holds what that
    version said. The most recently loaded row is the last good policy: a process that starts
    while the files on disk are bad serves it instead of refusing to start.
    """

    __tablename__ = "policy_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    files: Mapped[dict[str, Any]] = mapped_column(JSON)
    """File name → UTF-8 text, exactly the bytes that hash to `version`."""
    source_dir: Mapped[str] = mapped_column(String(1024))
    first_loaded_at: Mapped[datetime]
    last_loaded_at: Mapped[datetime] = mapped_column(index=True)
    loaded_by: Mapped[str] = mapped_column(String(255))


# -- watching what credentials do (CloudTrail, detections, notifications) ----------------------

_BIGINT_ID = BigInteger().with_variant(Integer, "sqlite")


class CloudTrailFile(Base):
    """One CloudTrail log file, claimed by one scheduler and read once (unique bucket and key).

    ``status``: ``claimed`` (being read by ``claimed_by`` under ``claim_token``), ``done``, or
    ``malformed`` (skipped and reported; never read again).
    """

    __tablename__ = "cloudtrail_files"
    __table_args__ = (
        UniqueConstraint("bucket", "key"),
        Index("ix_cloudtrail_files_status_claimed", "status", "claimed_at"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_ID, primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16))
    claim_token: Mapped[str] = mapped_column(String(32))
    claimed_by: Mapped[str] = mapped_column(String(255))
    claimed_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    done_at: Mapped[datetime | None]
    records: Mapped[int] = mapped_column(Integer, default=0)
    attributed: Mapped[int] = mapped_column(Integer, default=0)
    bad_records: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class ActivityCursor(Base):
    """How far a reader has got: a CloudTrail prefix's last settled key, the notifier's seq."""

    __tablename__ = "activity_cursors"

    name: Mapped[str] = mapped_column(String(1024), primary_key=True)
    position: Mapped[str] = mapped_column(String(1024))
    updated_at: Mapped[datetime]


class ActivityRecord(Base):
    """One CloudTrail record made with broker-issued credentials, joined to person and grant.

    Compact: the fields people ask about, the resources and a few request parameters; the whole
    record (secrets removed) only when BROKER_CLOUDTRAIL_STORE_RECORDS is set.
    """

    __tablename__ = "activity_records"
    __table_args__ = (
        Index("ix_activity_records_principal_time", "principal_id", "event_time"),
        Index("ix_activity_records_grant_time", "grant_id", "event_time"),
        Index("ix_activity_records_session_time", "session_id", "event_time"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_ID, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_time: Mapped[datetime] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(String(160))
    aws_region: Mapped[str | None] = mapped_column(String(32))
    account_id: Mapped[str | None] = mapped_column(String(12))
    source_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    error_code: Mapped[str | None] = mapped_column(String(128))
    access_key_id: Mapped[str | None] = mapped_column(String(128), index=True)
    matched_by: Mapped[str] = mapped_column(String(16))
    principal_id: Mapped[str] = mapped_column(String(32))
    grant_id: Mapped[str | None] = mapped_column(String(32))
    session_id: Mapped[str | None] = mapped_column(String(32))
    entitlement_id: Mapped[str | None] = mapped_column(String(64))
    role_arn: Mapped[str | None] = mapped_column(String(2048))
    after_grant_end: Mapped[bool] = mapped_column(Boolean, default=False)
    resources: Mapped[list[str]] = mapped_column(JSON, default=list)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    file_id: Mapped[int | None] = mapped_column(_BIGINT_ID)
    record: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Detection(Base):
    """A detection rule that matched a record, and what the broker did about it (once each)."""

    __tablename__ = "detections"
    __table_args__ = (UniqueConstraint("rule_id", "event_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    rule_id: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    response: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(64))
    event_time: Mapped[datetime]
    action: Mapped[str] = mapped_column(String(160))
    detected_at: Mapped[datetime] = mapped_column(index=True)
    principal_id: Mapped[str | None] = mapped_column(String(32), index=True)
    grant_id: Mapped[str | None] = mapped_column(String(32))
    session_id: Mapped[str | None] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Notification(Base):
    """One message in the outbox, delivered by the scheduler with retries (never by a request).

    ``dedupe_key`` makes each event produce its message once per channel, whichever scheduler
    notices it. ``status``: ``pending`` → ``sending`` (until ``claimed_until``) → ``sent``, or
    ``failed`` after the last attempt.
    """

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_status_next", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    event: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
