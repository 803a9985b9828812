"""Questions about activity, for the CLI and the web page: what did this person, grant or
session do, and what did the detection rules catch. Read-only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from broker.models import ActivityRecord, Detection, Principal

MAX_ROWS = 5000


@dataclass(frozen=True)
class ActivityFilter:
    """Which activity to show; empty fields do not filter."""

    person: str = ""
    """An email (case-insensitive)."""
    grant: str = ""
    session: str = ""
    since: datetime | None = None
    until: datetime | None = None
    flagged: bool = False
    """Only records made after their grant ended."""
    limit: int = 200


@dataclass(frozen=True)
class ActivityRow:
    """One attributed record as people read it."""

    event_time: datetime
    person: str
    action: str
    region: str
    account: str
    source_ip: str
    error_code: str
    entitlement: str
    grant_id: str
    session_id: str
    access_key_id: str
    after_grant_end: bool
    resources: list[str]
    summary: dict[str, Any]
    event_id: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "event_time": self.event_time.isoformat(),
            "person": self.person,
            "action": self.action,
            "region": self.region,
            "account": self.account,
            "source_ip": self.source_ip,
            "error_code": self.error_code,
            "entitlement": self.entitlement,
            "grant_id": self.grant_id,
            "session_id": self.session_id,
            "access_key_id": self.access_key_id,
            "after_grant_end": self.after_grant_end,
            "resources": self.resources,
            "request": self.summary,
            "event_id": self.event_id,
        }


@dataclass(frozen=True)
class DetectionRow:
    """One detection as people read it."""

    detected_at: datetime
    event_time: datetime
    person: str
    rule: str
    severity: str
    response: str
    outcome: str
    action: str
    grant_id: str
    reasons: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "detected_at": self.detected_at.isoformat(),
            "event_time": self.event_time.isoformat(),
            "person": self.person,
            "rule": self.rule,
            "severity": self.severity,
            "response": self.response,
            "outcome": self.outcome,
            "action": self.action,
            "grant_id": self.grant_id,
            "reasons": self.reasons,
        }


def _people(session: Session, email: str) -> list[str]:
    return list(
        session.scalars(
            select(Principal.id).where(func.lower(Principal.email) == email.strip().lower())
        ).all()
    )


def find_activity(session: Session, wanted: ActivityFilter) -> list[ActivityRow]:
    """Attributed records matching the filter, newest first (at most ``limit``)."""
    query = select(ActivityRecord, Principal.email).join(
        Principal, Principal.id == ActivityRecord.principal_id, isouter=True
    )
    if wanted.person:
        query = query.where(ActivityRecord.principal_id.in_(_people(session, wanted.person)))
    if wanted.grant:
        query = query.where(ActivityRecord.grant_id == wanted.grant)
    if wanted.session:
        query = query.where(
            or_(
                ActivityRecord.session_id == wanted.session,
                ActivityRecord.access_key_id == wanted.session,
            )
        )
    if wanted.since is not None:
        query = query.where(ActivityRecord.event_time >= wanted.since)
    if wanted.until is not None:
        query = query.where(ActivityRecord.event_time < wanted.until)
    if wanted.flagged:
        query = query.where(ActivityRecord.after_grant_end.is_(True))
    query = query.order_by(ActivityRecord.event_time.desc(), ActivityRecord.id.desc()).limit(
        min(max(wanted.limit, 1), MAX_ROWS)
    )
    return [
        ActivityRow(
            event_time=row.event_time,
            person=email or row.principal_id,
            action=row.action,
            region=row.aws_region or "",
            account=row.account_id or "",
            source_ip=row.source_ip or "",
            error_code=row.error_code or "",
            entitlement=row.entitlement_id or "",
            grant_id=row.grant_id or "",
            session_id=row.session_id or "",
            access_key_id=row.access_key_id or "",
            after_grant_end=row.after_grant_end,
            resources=list(row.resources or []),
            summary=dict(row.summary or {}),
            event_id=row.event_id,
        )
        for row, email in session.execute(query).all()
    ]


def find_detections(session: Session, wanted: ActivityFilter) -> list[DetectionRow]:
    """Detections matching the filter (person, grant, times), newest first."""
    query = select(Detection, Principal.email).join(
        Principal, Principal.id == Detection.principal_id, isouter=True
    )
    if wanted.person:
        query = query.where(Detection.principal_id.in_(_people(session, wanted.person)))
    if wanted.grant:
        query = query.where(Detection.grant_id == wanted.grant)
    if wanted.session:
        query = query.where(Detection.session_id == wanted.session)
    if wanted.since is not None:
        query = query.where(Detection.event_time >= wanted.since)
    if wanted.until is not None:
        query = query.where(Detection.event_time < wanted.until)
    query = query.order_by(Detection.detected_at.desc()).limit(min(max(wanted.limit, 1), MAX_ROWS))
    return [
        DetectionRow(
            detected_at=row.detected_at,
            event_time=row.event_time,
            person=email or row.principal_id or "",
            rule=row.rule_id,
            severity=row.severity,
            response=row.response,
            outcome=row.outcome,
            action=row.action,
            grant_id=row.grant_id or "",
            reasons=[str(r) for r in (row.details or {}).get("reasons", [])],
        )
        for row, email in session.execute(query).all()
    ]
