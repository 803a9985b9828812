"""Pages for admins: live grants and sessions, revoke, cut off, re-enable.

Reads go through `broker.admin_queries`; changes through GrantService, which checks again that
the caller is an admin and audits every change. Revoking a grant and cutting a person off each
take a confirmation step that works without JavaScript: the page's link opens a confirmation
page (what will end, and a reason), and the change happens only on a POST carrying
`confirm=yes` from that page; a POST without it shows the same confirmation page instead.
"""

from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template, request

from broker import admin_queries
from broker.auth.websession import login_required, require_caller, web_meta
from broker.db import get_database
from broker.errors import BadRequest, Forbidden, NotFound
from broker.grants import Caller
from broker.models import utcnow
from broker.services import grant_service
from broker.web.pagetext import Notice

bp = Blueprint("ui_admin", __name__)

_NOTICES = {
    "revoked": Notice("Grant revoked; its live sessions are being cut off on AWS."),
    "cut_off": Notice("Person cut off: their grants are revoked and new ones refused."),
    "restored": Notice("Person re-enabled."),
}


def _admin() -> Caller:
    caller = require_caller()
    if not grant_service().policy.evaluator.is_admin(caller.person):
        raise Forbidden(
            "The admin pages are for the people the policy names as broker admins.",
            hint="Ask the security team if you need admin access.",
        )
    return caller


def _confirmed() -> bool:
    return request.form.get("confirm") == "yes"


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


@bp.get("/admin/grants/<grant_id>")
@login_required
def grant_page(grant_id: str) -> str:
    """One grant, and the confirmation step before revoking it."""
    _admin()
    return _confirm_revoke(grant_id, reason="")


@bp.post("/admin/grants/<grant_id>/revoke")
@login_required
def revoke(grant_id: str) -> str | Response:
    """Revoke someone's grant, once the admin has confirmed it."""
    caller = _admin()
    reason = request.form.get("reason", "").strip()[:1000]
    if not _confirmed():
        return _confirm_revoke(grant_id, reason)
    grant_service().revoke(
        caller, grant_id, reason=reason or "revoked by an admin", meta=web_meta()
    )
    return redirect("/admin?done=revoked")  # type: ignore[return-value]


def _confirm_revoke(grant_id: str, reason: str) -> str:
    with get_database().session() as session:
        grant = admin_queries.grant_by_id(session, grant_id)
        if grant is None:
            raise NotFound(f"No grant {grant_id}.")
        _grants, sessions = admin_queries.live_counts(session, utcnow(), grant_id=grant_id)
    return render_template(
        "admin_confirm.html", kind="revoke", grant=grant, live_sessions=sessions, reason=reason
    )


@bp.get("/admin/people/<principal_id>")
@login_required
def person_page(principal_id: str) -> str:
    """One person, and the confirmation step before cutting them off."""
    caller = _admin()
    return _confirm_cut_off(caller, principal_id, reason="")


@bp.post("/admin/people/<principal_id>/cut-off")
@login_required
def cut_off(principal_id: str) -> str | Response:
    """Kill switch: revoke everything a person holds and refuse them until re-enabled."""
    caller = _admin()
    if principal_id == caller.principal_id:
        raise BadRequest("You cannot cut yourself off; ask another admin.")
    reason = request.form.get("reason", "").strip()[:1000]
    if not _confirmed():
        return _confirm_cut_off(caller, principal_id, reason)
    if not reason:
        raise BadRequest("Say why you are cutting this person off; it goes in the audit trail.")
    grant_service().cut_off(caller, principal_id, reason=reason, meta=web_meta())
    return redirect("/admin?done=cut_off")  # type: ignore[return-value]


def _confirm_cut_off(caller: Caller, principal_id: str, reason: str) -> str:
    with get_database().session() as session:
        person = admin_queries.person_by_id(session, principal_id)
        if person is None:
            raise NotFound(f"No person {principal_id}.")
        grants, sessions = admin_queries.live_counts(session, utcnow(), principal_id=principal_id)
    return render_template(
        "admin_confirm.html",
        kind="cut_off",
        person=person,
        is_self=principal_id == caller.principal_id,
        live_grants=grants,
        live_sessions=sessions,
        reason=reason,
    )


@bp.post("/admin/people/<principal_id>/restore")
@login_required
def restore(principal_id: str) -> Response:
    """Re-enable a person who was cut off."""
    caller = _admin()
    grant_service().restore(caller, principal_id, meta=web_meta())
    return redirect("/admin?done=restored")  # type: ignore[return-value]
