"""Pages for auditors: search the audit trail (paged), one event in full, the compliance report.

The search takes the export's filters with the export's meaning (person, entitlement, action as
exact or glob, UTC dates), so the export links under it return exactly the events it lists.
The compliance report is `broker audit report`'s (`broker.audit.report`) as a page in the
layout and as a CSV download; the download is audited first, as exports are.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, render_template, request
from sqlalchemy.exc import SQLAlchemyError

from broker import admin_queries
from broker.audit import EventContext, NewEvent
from broker.audit.report import build_report, report_csv
from broker.auth.websession import login_required, require_caller, web_meta
from broker.db import get_database
from broker.errors import AuditUnavailable, BadRequest, Forbidden, NotFound
from broker.grants import Caller
from broker.models import utcnow
from broker.services import grant_service

bp = Blueprint("ui_audit", __name__)

EXPORT_FORMATS = ("jsonl", "csv", "ocsf")
FILTERS = ("person", "entitlement", "action", "since", "until")
REPORT_DAYS = 30


def _auditor() -> Caller:
    caller = require_caller()
    if not grant_service().policy.evaluator.is_auditor(caller.person):
        raise Forbidden(
            "The audit trail is for the people the policy names as auditors.",
            hint="Ask the compliance team if you need to search the audit trail.",
        )
    return caller


@bp.get("/audit")
@login_required
def audit() -> str:
    """Search the audit trail, a page at a time; export links carry the same filters."""
    _auditor()
    args = request.args
    action = args.get("action", "").strip()[:64].lower()
    try:
        admin_queries.glob_to_like(action)
    except ValueError as exc:
        raise BadRequest(f"action: {exc}.") from exc
    filters = admin_queries.AuditFilter(
        person=args.get("person", "").strip()[:320],
        entitlement=args.get("entitlement", "").strip()[:2048],
        action=action,
        since=_date(args.get("since"), "since"),
        until=_date(args.get("until"), "until", end_of_day=True),
    )
    with get_database().read_session() as session:
        page = admin_queries.search_audit(
            session, filters, before=_seq(args.get("before")), after=_seq(args.get("after"))
        )
        actions = admin_queries.audit_actions(session)
    query = {k: v for k in FILTERS if (v := args.get(k, "").strip())}
    if action:
        query["action"] = action
    exports = {
        fmt: "/audit/export?" + urlencode({"format": fmt, **_export_filters(filters)})
        for fmt in EXPORT_FORMATS
    }
    links = {
        "newest": "/audit?" + urlencode(query) if page.newer_than is not None else None,
        "newer": "/audit?" + urlencode({**query, "after": page.newer_than})
        if page.newer_than is not None
        else None,
        "older": "/audit?" + urlencode({**query, "before": page.older_than})
        if page.older_than is not None
        else None,
    }
    return render_template(
        "audit.html", page=page, actions=actions, filters=query, exports=exports, links=links
    )


@bp.get("/audit/events/<int:seq>")
@login_required
def event(seq: int) -> str:
    """One audit event with everything it records (details, hashes)."""
    _auditor()
    with get_database().read_session() as session:
        found = admin_queries.audit_event(session, seq)
        if found is None:
            raise NotFound(f"No audit event #{seq}.")
    return render_template("audit_event.html", event=found)


@bp.get("/audit/report")
@login_required
def report() -> str:
    """The compliance report for a period (default: the last 30 days) as a page."""
    _auditor()
    since, until, period = _period()
    with get_database().snapshot_session() as session:
        built = build_report(session, since, until, now=utcnow())
    csv_link = "/audit/report.csv?" + urlencode(period)
    return render_template("audit_report.html", report=built, period=period, csv_link=csv_link)


@bp.get("/audit/report.csv")
@login_required
def report_download() -> Response:
    """The compliance report as CSV (`broker audit report --format csv`); audited first."""
    caller = _auditor()
    since, until, period = _period()
    _record(caller, "audit.report", {"format": "csv", **period})
    with get_database().snapshot_session() as session:
        built = build_report(session, since, until, now=utcnow())
    name = f"broker-report-{period['since']}-{period['until']}.csv"
    return Response(
        report_csv(built),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


def _period() -> tuple[datetime, datetime, dict[str, str]]:
    """The report's period from `since`/`until` dates (UTC, until inclusive), as datetimes
    (since <= t < until + 1 day) and as the dates to show and link to."""
    today = utcnow().date()
    since_text = request.args.get("since", "").strip() or str(
        today - timedelta(days=REPORT_DAYS - 1)
    )
    until_text = request.args.get("until", "").strip() or str(today)
    since = _date(since_text, "since")
    until = _date(until_text, "until", end_of_day=True)
    if since is None or until is None or until <= since:
        raise BadRequest("until: the period must end on or after the day it starts.")
    return since, until, {"since": since_text, "until": until_text}


def _record(caller: Caller, action: str, details: dict[str, Any]) -> None:
    """Audit what an auditor takes away; refuse (fail closed) when that cannot be recorded."""
    service = grant_service()
    meta = web_meta()
    context = EventContext(
        actor=caller.email,
        ip=meta.ip,
        user_agent=meta.user_agent,
        client=meta.client,
        policy_version=service.policy.version,
    )
    try:
        with get_database().session() as session:
            service.audit.append(
                session,
                context,
                NewEvent(action, target="audit-trail", decision="allow", details=details),
            )
    except SQLAlchemyError as exc:
        raise AuditUnavailable(
            "The download could not be recorded in the audit trail, so it was not started.",
            hint="Try again shortly; if it persists, tell the platform team.",
        ) from exc


def _export_filters(filters: admin_queries.AuditFilter) -> dict[str, str]:
    """The page's filters in the export endpoint's terms (same names, times in ISO 8601)."""
    out = {
        "person": filters.person,
        "entitlement": filters.entitlement,
        "action": filters.action,
        "since": filters.since.isoformat() if filters.since else "",
        "until": filters.until.isoformat() if filters.until else "",
    }
    return {k: v for k, v in out.items() if v}


def _seq(value: str | None) -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise BadRequest(f"Expected an event number, got {value[:40]!r}.")
    return int(value)


def _date(value: str | None, name: str, *, end_of_day: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise BadRequest(f"{name}: expected a date like 2025-01-31, got {value[:40]!r}.") from exc
    return day + timedelta(days=1) if end_of_day else day
