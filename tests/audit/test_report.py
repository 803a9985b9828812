"""The compliance report: counts per person and role, decisions, and end dates kept."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from flask import Flask

from broker.audit.cli import audit_cli
from broker.audit.report import CSV_COLUMNS, build_report, report_csv, report_html
from broker.db import Database, get_database
from broker.models import Grant, IssuedSession, Principal

T0 = datetime(2024, 5, 1, tzinfo=UTC)
READ = "arn:aws:iam::123456789012:role/read"
ADMIN = "arn:aws:iam::123456789012:role/admin"


def _person(session: object, email: str, kind: str = "staff", until: datetime | None = None) -> str:
    principal = Principal(
        issuer="urn:test", subject=email, email=email, source_identity=email.split("@")[0],
        kind=kind, valid_until=until,
    )  # fmt: skip
    session.add(principal)  # type: ignore[attr-defined]
    session.flush()  # type: ignore[attr-defined]
    return principal.id


def _grant(session: object, pid: str, role: str, start: datetime, hours: int, **kw: object) -> str:
    grant = Grant(
        principal_id=pid, entitlement_id="app-read" if role == READ else "app-admin",
        role_arn=role, status=kw.pop("status", "expired"), duration_seconds=hours * 3600,
        policy_version="p", created_at=start, starts_at=start,
        expires_at=start + timedelta(hours=hours), **kw,
    )  # fmt: skip
    session.add(grant)  # type: ignore[attr-defined]
    session.flush()  # type: ignore[attr-defined]
    return grant.id


def _session(session: object, pid: str, gid: str, role: str, at: datetime, name: str) -> None:
    session.add(  # type: ignore[attr-defined]
        IssuedSession(
            grant_id=gid, principal_id=pid, role_arn=role, role_session_name=name,
            source_identity=name, access_key_id="ASIA" + name, assumed_role_arn=role,
            issued_at=at, expires_at=at + timedelta(hours=1), client="cli",
        )
    )  # fmt: skip


def _populate(database: Database, *, overstay: bool) -> None:
    with database.session() as s:
        alice = _person(s, "alice@example.com")
        cora = _person(s, "cora@contractor.example", "contractor", T0 + timedelta(days=2))
        g1 = _grant(s, alice, READ, T0 + timedelta(hours=1), 4)
        _session(s, alice, g1, READ, T0 + timedelta(hours=1), "alice-1")
        _session(s, alice, g1, READ, T0 + timedelta(hours=2), "alice-2")
        g2 = _grant(
            s, alice, ADMIN, T0 + timedelta(hours=3), 1, status="revoked",
            decided_at=T0 + timedelta(hours=3), decided_by="sec@example.com",
            ended_at=T0 + timedelta(hours=3, minutes=30), ended_by="sec@example.com",
            end_reason="done early",
        )  # fmt: skip
        _session(s, alice, g2, ADMIN, T0 + timedelta(hours=3), "alice-3")
        g3 = _grant(s, cora, READ, T0 + timedelta(days=1), 4)
        _session(s, cora, g3, READ, T0 + timedelta(days=1), "cora-1")
        if overstay:
            late = T0 + timedelta(days=2) - timedelta(minutes=30)
            g4 = _grant(s, cora, READ, late, 2)
            _session(s, cora, g4, READ, late, "cora-2")
        _grant(s, alice, READ, T0 - timedelta(days=5), 1)  # outside the period


def test_report_counts(database: Database) -> None:
    _populate(database, overstay=False)
    with database.session() as s:
        report = build_report(s, T0, T0 + timedelta(days=7), now=T0 + timedelta(days=7))
    people = {p.email: p for p in report.people}
    assert people["alice@example.com"].grants == 2
    assert people["alice@example.com"].sessions == 3
    assert people["alice@example.com"].revoked == 1 and people["alice@example.com"].approved == 1
    assert people["cora@contractor.example"].kind == "contractor"
    roles = {r.role_arn: r for r in report.roles}
    assert roles[READ].sessions == 3 and roles[READ].people == 2 and roles[ADMIN].revoked == 1
    assert [d.by for d in report.approvals] == ["sec@example.com"]
    assert [d.comment for d in report.revocations] == ["done early"]
    assert report.overstays == []
    html = report_html(report)
    assert "None: no one held a grant" in html and "alice@example.com" in html


def test_contractor_past_end_date_is_a_finding(database: Database) -> None:
    _populate(database, overstay=True)
    with database.session() as s:
        report = build_report(s, T0, T0 + timedelta(days=7), now=T0 + timedelta(days=7))
    found = {(o.email, o.what) for o in report.overstays}
    assert found == {("cora@contractor.example", "session"), ("cora@contractor.example", "grant")}
    rows = list(csv.DictReader(io.StringIO(report_csv(report), newline="")))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert sum(r["section"] == "overstay" for r in rows) == 2
    assert "finding(s)" in report_html(report)


def test_cli_report(app: Flask) -> None:
    _populate(get_database(app), overstay=True)
    runner = app.test_cli_runner()
    args = ["report", "--since", "2024-05-01", "--until", "2024-05-08"]
    html = runner.invoke(audit_cli, args)
    assert html.exit_code == 0 and "<html" in html.output and "FINDING: 2" in html.output
    as_csv = runner.invoke(audit_cli, [*args, "--format", "csv"])
    assert as_csv.stdout.startswith("section,subject")
    backwards = runner.invoke(
        audit_cli, ["report", "--since", "2024-05-08", "--until", "2024-05-01"]
    )
    assert backwards.exit_code == 2
