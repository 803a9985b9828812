"""Read-only queries behind the admin and audit pages (views never query the database).

Each function takes an open SQLAlchemy session and returns plain, detached rows or small
dataclasses; nothing here changes state (that is GrantService's job).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from broker.models import (
    AuditEvent,
    Grant,
    GrantStatus,
    IssuedSession,
    Principal,
    Revocation,
    RevocationStatus,
)

MAX_ROWS = 500


@dataclass(frozen=True)
class LiveSession:
    """An issued AWS session that has not expired yet."""

    session: IssuedSession
    person: str
    grant_status: str


@dataclass(frozen=True)
class AuditFilter:
    """What an auditor searches for; empty fields do not filter."""

    actor: str = ""
    action: str = ""
    target: str = ""
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200


def live_grants(session: Session, now: datetime) -> list[Grant]:
    """Active grants that have not expired, and pending requests, soonest expiry first."""
    query = (
        select(Grant)
        .where(
            or_(
                Grant.status == GrantStatus.PENDING,
                (Grant.status == GrantStatus.ACTIVE) & (Grant.expires_at > now),
            )
        )
        .order_by(Grant.status, Grant.expires_at, Grant.created_at)
        .limit(MAX_ROWS)
    )
    return list(session.scalars(query).all())


def live_sessions(session: Session, now: datetime) -> list[LiveSession]:
    """AWS sessions still valid at `now`, with their person and grant state."""
    rows = session.execute(
        select(IssuedSession, Principal.email, Grant.status)
        .join(Principal, Principal.id == IssuedSession.principal_id)
        .join(Grant, Grant.id == IssuedSession.grant_id)
        .where(IssuedSession.expires_at > now)
        .order_by(IssuedSession.expires_at)
        .limit(MAX_ROWS)
    ).all()
    return [LiveSession(row[0], row[1], row[2]) for row in rows]


def pending_revocations(session: Session) -> list[Revocation]:
    """Deny statements not yet applied on AWS (retrying, or failed)."""
    return list(
        session.scalars(
            select(Revocation)
            .where(Revocation.status == RevocationStatus.PENDING)
            .order_by(Revocation.created_at)
            .limit(MAX_ROWS)
        ).all()
    )


def people(session: Session, search: str = "") -> list[Principal]:
    """People the broker knows (cut-off ones first), optionally filtered by email."""
    query = select(Principal)
    if search:
        query = query.where(Principal.email.contains(search.lower(), autoescape=True))
    query = query.order_by(Principal.disabled.desc(), Principal.email).limit(MAX_ROWS)
    return list(session.scalars(query).all())


def principal_emails(session: Session, ids: Sequence[str]) -> dict[str, str]:
    """Email of each principal id."""
    if not ids:
        return {}
    rows = session.execute(
        select(Principal.id, Principal.email).where(Principal.id.in_(list(ids)))
    ).all()
    return {row[0]: row[1] for row in rows}


def grant_by_id(session: Session, grant_id: str) -> Grant | None:
    """One grant, or None."""
    return session.get(Grant, grant_id)


def search_audit(session: Session, filters: AuditFilter) -> list[AuditEvent]:
    """Audit events matching the filters, newest first."""
    query = select(AuditEvent)
    if filters.actor:
        query = query.where(AuditEvent.actor.contains(filters.actor, autoescape=True))
    if filters.action:
        query = query.where(AuditEvent.action.startswith(filters.action, autoescape=True))
    if filters.target:
        query = query.where(AuditEvent.target.contains(filters.target, autoescape=True))
    if filters.since is not None:
        query = query.where(AuditEvent.ts >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEvent.ts < filters.until)
    limit = max(1, min(filters.limit, MAX_ROWS))
    return list(session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit)).all())


def audit_actions(session: Session) -> list[str]:
    """Every distinct action in the trail (for the filter's suggestions)."""
    return sorted(session.scalars(select(AuditEvent.action).distinct()).all())


def count_live_grants(session: Session, now: datetime) -> int:
    """How many grants are active right now."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Grant)
            .where(Grant.status == GrantStatus.ACTIVE, Grant.expires_at > now)
        )
        or 0
    )
