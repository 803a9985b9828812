"""Pages for admins (live grants and sessions, revoke, cut off, re-enable) and auditors (search).

Reads go through `broker.admin_queries`; changes through GrantService, which checks again that
the caller is an admin and audits every change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from flask import Blueprint, Response, redirect, render_template, request

from broker import admin_queries
from broker.auth.websession import login_required, require_caller, web_meta
from broker.db import get_database
from broker.errors import BadRequest, Forbidden
from broker.grants import Caller
from broker.models import utcnow
from broker.services import grant_service

bp = Blueprint("ui_admin", __name__)

_NOTICES = {
    "revoked": "Grant revoked; its live sessions are being cut off on AWS.",
    "cut_off": "Person cut off: their grants are revoked and new ones refused.",
    "restored": "Person re-enabled.",
}
EXPORT_FORMATS = ("jsonl", "csv", "ocsf")


def _admin() -> Caller:
    caller = require_caller()
    if not grant_service().policy.evaluator.is_admin(caller.person):
        raise Forbidden(
            "The admin pages are for the people the policy names as broker admins.",
            hint="Ask the security team if you need admin access.",
        )
    return caller


def _auditor() -> Caller:
    caller = require_caller()
    if not grant_service().policy.evaluator.is_auditor(caller.person):
        raise Forbidden(
            "The audit trail is for the people the policy names as auditors.",
            hint="Ask the compliance team if you need to search the audit trail.",
        )
    return caller


@bp.get("/admin")
@login_required
def admin() -> str:
    """Live grants and sessions, people, and revocations still pending on AWS."""
    _admin()
    now = utcnow()
    search = request.args.get("q", "").strip()[:320]
    with get_database().session() as session:
        grants = admin_queries.live_grants(session, now)
        sessions = admin_queries.live_sessions(session, now)
        revocations = admin_queries.pending_revocations(session)
        people = admin_queries.people(session, search)
    return render_template(
        "admin.html",
        grants=grants,
        sessions=sessions,
        revocations=revocations,
        people=people,
        search=search,
        notice=_NOTICES.get(request.args.get("done", "")),
    )


@bp.post("/admin/grants/<grant_id>/revoke")
@login_required
def revoke(grant_id: str) -> Response:
    """Revoke someone's grant."""
    caller = _admin()
    reason = request.form.get("reason", "").strip()[:1000] or "revoked by an admin"
    grant_service().revoke(caller, grant_id, reason=reason, meta=web_meta())
    return redirect("/admin?done=revoked")  # type: ignore[return-value]


@bp.post("/admin/people/<principal_id>/cut-off")
@login_required
def cut_off(principal_id: str) -> Response:
    """Kill switch: revoke everything a person holds and refuse them until re-enabled."""
    caller = _admin()
    reason = request.form.get("reason", "").strip()[:1000]
    if not reason:
        raise BadRequest("Say why you are cutting this person off; it goes in the audit trail.")
    if principal_id == caller.principal_id:
        raise BadRequest("You cannot cut yourself off; ask another admin.")
    grant_service().cut_off(caller, principal_id, reason=reason, meta=web_meta())
    return redirect("/admin?done=cut_off")  # type: ignore[return-value]


@bp.post("/admin/people/<principal_id>/restore")
@login_required
def restore(principal_id: str) -> Response:
    """Re-enable a person who was cut off."""
    caller = _admin()
    grant_service().restore(caller, principal_id, meta=web_meta())
    return redirect("/admin?done=restored")  # type: ignore[return-value]


@bp.get("/audit")
@login_required
def audit() -> str:
    """Search the audit trail; export links carry the same filters."""
    _auditor()
    args = request.args
    filters = admin_queries.AuditFilter(
        actor=args.get("actor", "").strip()[:320],
        action=args.get("action", "").strip()[:64],
        target=args.get("target", "").strip()[:2048],
        since=_date(args.get("since"), "since"),
        until=_date(args.get("until"), "until", end_of_day=True),
    )
    with get_database().session() as session:
        events = admin_queries.search_audit(session, filters)
        actions = admin_queries.audit_actions(session)
    query = {k: args.get(k, "") for k in ("actor", "action", "target", "since", "until")}
    query = {k: v for k, v in query.items() if v}
    exports = {
        fmt: "/audit/export?" + urlencode({"format": fmt, **_export_filters(filters)})
        for fmt in EXPORT_FORMATS
    }
    return render_template(
        "audit.html", events=events, actions=actions, filters=query, exports=exports
    )


def _export_filters(filters: admin_queries.AuditFilter) -> dict[str, str]:
    """The page's filters in the export endpoint's terms (person, entitlement, action, times)."""
    out = {
        "person": filters.actor,
        "entitlement": filters.target,
        "action": filters.action,
        "since": filters.since.isoformat() if filters.since else "",
        "until": filters.until.isoformat() if filters.until else "",
    }
    return {k: v for k, v in out.items() if v}


def _date(value: str | None, name: str, *, end_of_day: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise BadRequest(f"{name}: expected a date like 2025-01-31, got {value[:40]!r}.") from exc
    return day + timedelta(days=1) if end_of_day else day
