"""The compliance report: who held what, who approved it, what was revoked, and end dates kept.

Counts come from the grant and session tables for a half-open period `since <= t < until`.
The one section that should always be empty lists people with an end date (contractors) who
held a grant or a live session after it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session

from broker.audit.export import csv_cell
from broker.models import Grant, GrantStatus, IssuedSession, Principal

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
CSV_COLUMNS = ("section", "subject", "kind", "grants", "approved", "denied", "revoked",
               "sessions", "people", "when", "detail")  # fmt: skip


@dataclass(frozen=True)
class PersonLine:
    """One person's activity in the period."""

    email: str
    kind: str
    valid_until: datetime | None
    grants: int
    approved: int
    denied: int
    revoked: int
    sessions: int


@dataclass(frozen=True)
class RoleLine:
    """One role's activity in the period."""

    role_arn: str
    grants: int
    revoked: int
    sessions: int
    people: int


@dataclass(frozen=True)
class Decision:
    """An approval decision or a revocation."""

    grant_id: str
    entitlement: str
    person: str
    by: str | None
    at: datetime | None
    outcome: str
    comment: str | None


@dataclass(frozen=True)
class Overstay:
    """Access held past a person's end date (a finding: there should be none)."""

    email: str
    kind: str
    valid_until: datetime
    what: str
    ref: str
    held_until: datetime


@dataclass
class ComplianceReport:
    """Everything the report shows for one period."""

    since: datetime
    until: datetime
    generated_at: datetime
    people: list[PersonLine] = field(default_factory=list)
    roles: list[RoleLine] = field(default_factory=list)
    approvals: list[Decision] = field(default_factory=list)
    revocations: list[Decision] = field(default_factory=list)
    overstays: list[Overstay] = field(default_factory=list)


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def build_report(
    session: Session, since: datetime, until: datetime, *, now: datetime
) -> ComplianceReport:
    """Gather the report for `since <= t < until`."""
    report = ComplianceReport(since, until, now)
    created = and_(Grant.created_at >= since, Grant.created_at < until)
    decided = and_(Grant.decided_at >= since, Grant.decided_at < until)
    ended = and_(Grant.ended_at >= since, Grant.ended_at < until)
    revoked = and_(ended, Grant.status == GrantStatus.REVOKED)
    issued = and_(IssuedSession.issued_at >= since, IssuedSession.issued_at < until)

    sessions_by_person = dict(
        session.execute(
            select(IssuedSession.principal_id, func.count())
            .where(issued)
            .group_by(IssuedSession.principal_id)
        ).all()
    )
    grant_rows = session.execute(
        select(
            Grant.principal_id,
            _count(created),
            _count(and_(decided, Grant.decided_by.is_not(None), Grant.status != "denied")),
            _count(and_(decided, Grant.status == GrantStatus.DENIED)),
            _count(revoked),
        )
        .where(or_(created, decided, ended))
        .group_by(Grant.principal_id)
    ).all()
    by_person = {row[0]: row[1:] for row in grant_rows}
    ids = set(by_person) | set(sessions_by_person)
    principals = (
        session.scalars(select(Principal).where(Principal.id.in_(ids))).all() if ids else []
    )
    for p in sorted(principals, key=lambda p: p.email):
        g = by_person.get(p.id, (0, 0, 0, 0))
        report.people.append(
            PersonLine(
                p.email,
                p.kind,
                p.valid_until,
                int(g[0]),
                int(g[1]),
                int(g[2]),
                int(g[3]),
                int(sessions_by_person.get(p.id, 0)),
            )  # fmt: skip
        )

    role_grants = {
        row[0]: row[1:]
        for row in session.execute(
            select(Grant.role_arn, _count(created), _count(revoked))
            .where(or_(created, ended))
            .group_by(Grant.role_arn)
        ).all()
    }
    role_sessions = {
        row[0]: row[1:]
        for row in session.execute(
            select(
                IssuedSession.role_arn,
                func.count(),
                func.count(func.distinct(IssuedSession.principal_id)),
            )
            .where(issued)
            .group_by(IssuedSession.role_arn)
        ).all()
    }
    for arn in sorted(set(role_grants) | set(role_sessions)):
        grants, revokes = role_grants.get(arn, (0, 0))
        count, people = role_sessions.get(arn, (0, 0))
        report.roles.append(RoleLine(arn, int(grants), int(revokes), int(count), int(people)))

    for grant in session.scalars(select(Grant).where(decided).order_by(Grant.decided_at)):
        report.approvals.append(
            Decision(
                grant.id,
                grant.entitlement_id,
                grant.principal.email,
                grant.decided_by,
                grant.decided_at,
                "denied" if grant.status == "denied" else "approved",
                grant.decision_comment,
            )  # fmt: skip
        )
    for grant in session.scalars(select(Grant).where(revoked).order_by(Grant.ended_at)):
        report.revocations.append(
            Decision(
                grant.id,
                grant.entitlement_id,
                grant.principal.email,
                grant.ended_by,
                grant.ended_at,
                "revoked",
                grant.end_reason,
            )  # fmt: skip
        )
    report.overstays = list(_overstays(session, since, until))
    return report


def _overstays(session: Session, since: datetime, until: datetime) -> Iterator[Overstay]:
    """Sessions or grants of people with an end date that reached past it, in the period."""
    late_sessions = session.execute(
        select(IssuedSession, Principal)
        .join(Principal, Principal.id == IssuedSession.principal_id)
        .where(
            Principal.valid_until.is_not(None),
            IssuedSession.expires_at > Principal.valid_until,
            IssuedSession.issued_at < until,
            IssuedSession.expires_at > since,
        )
        .order_by(IssuedSession.issued_at)
    ).all()
    for row, person in late_sessions:
        if person.valid_until is None:  # excluded by the query; keeps the type checker honest
            continue
        yield Overstay(person.email, person.kind, person.valid_until, "session",
                       row.role_session_name, row.expires_at)  # fmt: skip
    held_until = func.coalesce(Grant.ended_at, Grant.expires_at)
    late_grants = session.execute(
        select(Grant, Principal)
        .join(Principal, Principal.id == Grant.principal_id)
        .where(
            Principal.valid_until.is_not(None),
            Grant.starts_at.is_not(None),
            held_until > Principal.valid_until,
            Grant.starts_at < until,
            held_until > since,
        )
        .order_by(Grant.starts_at)
    ).all()
    for grant, person in late_grants:
        end = grant.ended_at or grant.expires_at
        if person.valid_until is None or end is None:
            continue
        yield Overstay(person.email, person.kind, person.valid_until, "grant", grant.id, end)


def report_csv(report: ComplianceReport) -> str:
    """The report as one CSV table; `section` says which part each row belongs to."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)

    def put(*values: object) -> None:
        writer.writerow([csv_cell(v.isoformat() if isinstance(v, datetime) else v) for v in values])

    for p in report.people:
        put("person", p.email, p.kind, p.grants, p.approved, p.denied, p.revoked, p.sessions,
            "", p.valid_until or "", "")  # fmt: skip
    for r in report.roles:
        put("role", r.role_arn, "", r.grants, "", "", r.revoked, r.sessions, r.people, "", "")
    for d in report.approvals:
        put(f"approval:{d.outcome}", d.person, d.entitlement, "", "", "", "", "", "",
            d.at or "", f"grant {d.grant_id} by {d.by}: {d.comment or ''}".strip())  # fmt: skip
    for d in report.revocations:
        put("revocation", d.person, d.entitlement, "", "", "", "", "", "", d.at or "",
            f"grant {d.grant_id} by {d.by}: {d.comment or ''}".strip())  # fmt: skip
    for o in report.overstays:
        put("overstay", o.email, o.kind, "", "", "", "", "", "", o.held_until,
            f"{o.what} {o.ref} held past end date {o.valid_until.isoformat()}")  # fmt: skip
    return buffer.getvalue()


def report_html(report: ComplianceReport) -> str:
    """The report as a self-contained HTML page."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("audit/report.html").render(report=report)
