"""Read-only queries behind the admin and audit pages (views never query the database).

Each function takes an open SQLAlchemy session and returns plain, detached rows or small
dataclasses; nothing here changes state (that is GrantService's job).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
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
AUDIT_PAGE_SIZE = 50


@dataclass(frozen=True)
class LiveSession:
    """An issued AWS session that has not expired yet."""

    session: IssuedSession
    person: str
    grant_status: str


@dataclass(frozen=True)
class AuditFilter:
    """What an auditor searches for; empty fields do not filter.

    The same meaning as the export's filter (`broker.audit.export.ExportFilter`), so the
    export links on the audit page return exactly the events the page lists: `person` is an
    email (any case) that is the actor, the target, or `details.person` / `details.requester`;
    `entitlement` is the target or `details.entitlement`; `action` is exact or a glob with `*`
    and `?` (`grant.*`); times are a half-open range, since <= ts < until.
    """

    person: str = ""
    entitlement: str = ""
    action: str = ""
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class AuditPage:
    """One page of matching events, newest first, and where the neighbouring pages start."""

    events: list[AuditEvent]
    total: int
    newer_than: int | None
    """Seq to page back towards newer events from (`after=`); None on the newest page."""
    older_than: int | None
    """Seq to page on towards older events from (`before=`); None on the oldest page."""


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


def person_by_id(session: Session, principal_id: str) -> Principal | None:
    """One person, or None."""
    return session.get(Principal, principal_id)


def live_counts(
    session: Session, now: datetime, *, principal_id: str | None = None, grant_id: str | None = None
) -> tuple[int, int]:
    """(live grants, live AWS sessions) of one person or under one grant: what an end cuts."""
    grants = (
        select(func.count())
        .select_from(Grant)
        .where(Grant.status.in_((GrantStatus.ACTIVE, GrantStatus.PENDING)))
    )
    sessions = select(func.count()).select_from(IssuedSession).where(IssuedSession.expires_at > now)
    if principal_id is not None:
        grants = grants.where(Grant.principal_id == principal_id)
        sessions = sessions.where(IssuedSession.principal_id == principal_id)
    if grant_id is not None:
        grants = grants.where(Grant.id == grant_id)
        sessions = sessions.where(IssuedSession.grant_id == grant_id)
    return int(session.scalar(grants) or 0), int(session.scalar(sessions) or 0)


def glob_to_like(pattern: str) -> str:
    """A `*`/`?` glob as a LIKE pattern (escape character `\\`); `[` classes are refused."""
    if "[" in pattern or "]" in pattern:
        raise ValueError("use * and ? in the pattern (for example grant.*), not [ ]")
    out = []
    for char in pattern:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _audit_conditions(filters: AuditFilter) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    details = AuditEvent.details
    if filters.person:
        who = filters.person.lower()
        where.append(
            or_(
                func.lower(AuditEvent.actor) == who,
                func.lower(AuditEvent.target) == who,
                func.lower(details["person"].as_string()) == who,
                func.lower(details["requester"].as_string()) == who,
            )
        )
    if filters.entitlement:
        where.append(
            or_(
                AuditEvent.target == filters.entitlement,
                details["entitlement"].as_string() == filters.entitlement,
            )
        )
    if filters.action:
        where.append(
            or_(
                AuditEvent.action == filters.action,
                AuditEvent.action.like(glob_to_like(filters.action), escape="\\"),
            )
        )
    if filters.since is not None:
        where.append(AuditEvent.ts >= filters.since)
    if filters.until is not None:
        where.append(AuditEvent.ts < filters.until)
    return where


def search_audit(
    session: Session,
    filters: AuditFilter,
    *,
    before: int | None = None,
    after: int | None = None,
    size: int = AUDIT_PAGE_SIZE,
) -> AuditPage:
    """One page of events matching the filters, newest first.

    Pages are keyed by sequence number, not offset, so new events arriving between clicks
    neither shift nor repeat rows: `before` gives the page of older events below that seq,
    `after` the page of newer ones above it; neither gives the newest page.
    """
    size = max(1, min(size, MAX_ROWS))
    where = _audit_conditions(filters)
    matching = and_(*where) if where else None

    def query(*extra: ColumnElement[bool]) -> Select[AuditEvent]:
        conditions = [c for c in (matching, *extra) if c is not None]
        return select(AuditEvent).where(*conditions)

    def exists(*extra: ColumnElement[bool]) -> bool:
        conditions = [c for c in (matching, *extra) if c is not None]
        return session.scalar(select(AuditEvent.seq).where(*conditions).limit(1)) is not None

    if after is not None:
        rows = session.scalars(
            query(AuditEvent.seq > after).order_by(AuditEvent.seq.asc()).limit(size)
        ).all()
        events = list(reversed(rows))
    else:
        extra = [AuditEvent.seq < before] if before is not None else []
        events = list(
            session.scalars(query(*extra).order_by(AuditEvent.seq.desc()).limit(size)).all()
        )
    total = int(session.scalar(select(func.count()).select_from(query().subquery())) or 0)
    newer = older = None
    if events:
        top, bottom = events[0].seq, events[-1].seq
        newer = top if exists(AuditEvent.seq > top) else None
        older = bottom if exists(AuditEvent.seq < bottom) else None
    return AuditPage(events, total, newer, older)


def audit_event(session: Session, seq: int) -> AuditEvent | None:
    """One audit event by its sequence number."""
    return session.get(AuditEvent, seq)


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
