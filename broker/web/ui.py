"""Pages for engineers and approvers: home, request, credentials (shown once), approvals.

Thin views over GrantService: they read the form, call one service method, render. Every
state change is a POST carrying the session's CSRF token (checked in `web.security`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app, g, redirect, render_template, request

from broker.auth.oidc import external_url
from broker.auth.websession import csrf_token, login_required, require_caller, setting, web_meta
from broker.console import console_url, seconds_left
from broker.errors import BadRequest, BrokerError, NotFound
from broker.grants import Caller, GrantService
from broker.grants.types import GrantExists
from broker.models import Grant, GrantStatus, utcnow
from broker.policy import Decision, format_duration, parse_duration
from broker.policy.matching import CompiledMatch
from broker.services import grant_service
from broker.sts import IssuedCredentials
from broker.web.api import client_region
from broker.web.pagetext import Notice
from broker.web.security import limit_issue

bp = Blueprint("ui", __name__)

_PROFILE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DURATION_CHOICES = ("15m", "30m", "1h", "2h", "4h", "8h", "12h")
# Long enough for most tasks, short enough that a forgotten grant does not linger.
DEFAULT_DURATION = timedelta(hours=1)
_NOTICES = {
    "approved": Notice("Request approved: the requester can now get credentials."),
    "denied": Notice("Request denied; the requester sees your comment.", "info"),
    "revoked": Notice("Grant ended."),
}


@bp.app_context_processor
def _layout() -> dict[str, Any]:
    """What the layout needs: the signed-in person (if already resolved), the pages their
    roles open (approvals, admin, audit), and the time the page is made (for countdowns)."""
    caller: Caller | None = g.get("web_caller")
    is_admin = is_auditor = is_approver = False
    if caller is not None:
        evaluator = grant_service().policy.evaluator
        is_admin = evaluator.is_admin(caller.person)
        is_auditor = evaluator.is_auditor(caller.person)
        is_approver = _approves_something(caller)
    return {
        "caller": caller,
        "is_admin": is_admin,
        "is_auditor": is_auditor,
        "is_approver": is_approver,
        "now": utcnow(),
        "csrf_token": csrf_token() if caller is not None else "",
    }


def _approves_something(caller: Caller) -> bool:
    """True when the policy names this person an approver of at least one entitlement."""
    evaluator = grant_service().policy.evaluator
    return any(
        ent.approval is not None and evaluator.can_approve(caller.person, ent.id)
        for ent in evaluator.policy.entitlements
    )


@dataclass(frozen=True)
class Snippets:
    """The ways to use one set of credentials, each ready to paste."""

    bash: str
    fish: str
    powershell: str
    credentials_file: str
    config_file: str
    cli: str


def snippets(creds: IssuedCredentials, entitlement_id: str, profile: str, region: str) -> Snippets:
    """Render the credentials for bash, fish, PowerShell, ~/.aws/credentials and the CLI.

    The exports carry the region too (`AWS_REGION` for the SDKs, `AWS_DEFAULT_REGION` for the
    AWS CLI), so a pasted `aws sts get-caller-identity` works without `--region`.
    """
    values = {
        "AWS_ACCESS_KEY_ID": creds.access_key_id,
        "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
        "AWS_SESSION_TOKEN": creds.session_token,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }
    expiration = creds.expiration.replace(microsecond=0).isoformat().replace("+00:00", "Z")

    def quoted(value: str) -> str:
        return "'" + value.replace("'", "'\\''") + "'"

    bash = "\n".join(f"export {k}={quoted(v)}" for k, v in values.items())
    fish = "\n".join(f"set -gx {k} {quoted(v)}" for k, v in values.items())
    powershell = "\n".join(
        f"$Env:{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in values.items()
    )
    credentials_file = (
        f"[{profile}]\n"
        f"aws_access_key_id = {creds.access_key_id}\n"
        f"aws_secret_access_key = {creds.secret_access_key}\n"
        f"aws_session_token = {creds.session_token}\n"
        f"# expires {expiration}"
    )
    config_file = f"[profile {profile}]\nregion = {region}"
    cli = f"broker creds {entitlement_id} --profile {profile}"
    return Snippets(bash, fish, powershell, credentials_file, config_file, cli)


# -- home ---------------------------------------------------------------------------------------


@bp.get("/")
@login_required
def home() -> str:
    """What I may use (and why not the rest), and my live grants with a countdown."""
    service, caller = grant_service(), require_caller()
    decisions = service.entitlements(caller, web_meta())
    grants = service.list_grants(caller)
    active = [x for x in grants if x.status == GrantStatus.ACTIVE]
    pending = [x for x in grants if x.status == GrantStatus.PENDING]
    return render_template(
        "home.html",
        allowed=[d for d in decisions if d.allowed],
        refused=[d for d in decisions if not d.allowed],
        active=active,
        pending=pending,
        active_ids={x.entitlement_id for x in active},
        pending_ids={x.entitlement_id for x in pending},
        approvers={x.entitlement_id: _approvers(service, x) for x in pending},
        default_duration=_default_duration,
        notice=_NOTICES.get(request.args.get("done", "")),
    )


def _approvers(service: GrantService, grant: Grant) -> str:
    """Who may decide a pending request, in the policy's words (e.g. `group security`)."""
    entitlement = service.policy.evaluator.entitlement(grant.entitlement_id)
    if entitlement is None or entitlement.approval is None:
        return "an approver"
    return CompiledMatch(entitlement.approval.approvers).describe()


# -- request ------------------------------------------------------------------------------------


@bp.get("/request/<entitlement_id>")
@login_required
def request_form(entitlement_id: str) -> str:
    """The request form: reason and duration (and, where no approval is needed, the profile)."""
    service, caller = grant_service(), require_caller()
    decision = _decision(service, caller, entitlement_id)
    return render_template(
        "request.html",
        decision=decision,
        durations=_durations(decision),
        default=_default_duration(decision),
    )


@bp.post("/request/<entitlement_id>")
@login_required
def request_submit(entitlement_id: str) -> str | Response:
    """Create the grant. Where no approval is needed, issue credentials at once and show them
    (one step: request + issue); otherwise say the request waits for an approver."""
    service, caller = grant_service(), require_caller()
    reason = request.form.get("reason", "").strip() or None
    duration = _duration_field(request.form.get("duration"))
    profile = _profile_field(entitlement_id)
    try:
        grant = service.request_grant(
            caller, entitlement_id, reason=reason, duration=duration, meta=web_meta()
        )
    except GrantExists:
        # Already granted: the button still means "get me credentials" (a pending one stays).
        live = [x for x in service.list_grants(caller) if x.entitlement_id == entitlement_id]
        if not any(x.status == GrantStatus.ACTIVE for x in live):
            raise
        grant = next(x for x in live if x.status == GrantStatus.ACTIVE)
    if grant.status != GrantStatus.ACTIVE:
        return render_template("requested.html", grant=grant, approvers=_approvers(service, grant))
    return _issue_page(service, caller, entitlement_id, profile, duration=None)


# -- credentials --------------------------------------------------------------------------------


@bp.post("/credentials/<entitlement_id>")
@login_required
def credentials(entitlement_id: str) -> Response:
    """Issue credentials under my active grant and show them once (never stored, never cached)."""
    service, caller = grant_service(), require_caller()
    profile = _profile_field(entitlement_id)
    duration = _duration_field(request.form.get("duration"))
    return _issue_page(service, caller, entitlement_id, profile, duration=duration)


def _issue_page(
    service: GrantService,
    caller: Caller,
    entitlement_id: str,
    profile: str,
    *,
    duration: timedelta | None,
) -> Response:
    limit_issue(caller.principal_id)
    issued = service.issue(caller, entitlement_id, duration=duration, meta=web_meta())
    creds = issued.credentials
    console, console_error = _console_link(creds)
    region = client_region(service.policy.evaluator.entitlement(entitlement_id))
    body = render_template(
        "credentials.html",
        issued=issued,
        creds=creds,
        expiration=creds.expiration.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        snippets=snippets(creds, entitlement_id, profile, region),
        profile=profile,
        region=region,
        console=console,
        console_error=console_error,
    )
    response = Response(body, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _console_link(creds: IssuedCredentials) -> tuple[str | None, str | None]:
    try:
        url = console_url(
            creds,
            federation_endpoint=str(setting("FEDERATION_ENDPOINT")),
            destination=str(setting("CONSOLE_URL")),
            issuer_url=external_url("/"),
            session_duration=seconds_left(creds, utcnow()),
        )
    except BrokerError as exc:
        current_app.logger.warning("console link unavailable: %s", exc.code)
        return None, exc.message
    return url, None


@bp.post("/grants/<grant_id>/revoke")
@login_required
def end_grant(grant_id: str) -> Response:
    """End one of my grants early."""
    service, caller = grant_service(), require_caller()
    service.revoke(caller, grant_id, reason="ended by its owner", meta=web_meta())
    return redirect("/?done=revoked")  # type: ignore[return-value]


# -- approvals ----------------------------------------------------------------------------------


@bp.get("/approvals")
@login_required
def approvals() -> str:
    """Requests I may decide (never my own), and my own that wait for someone else."""
    service, caller = grant_service(), require_caller()
    mine = [x for x in service.list_grants(caller) if x.status == GrantStatus.PENDING]
    return render_template(
        "approvals.html",
        pending=service.pending_for_approver(caller),
        mine=mine,
        approvers={x.entitlement_id: _approvers(service, x) for x in mine},
        notice=_NOTICES.get(request.args.get("done", "")),
    )


@bp.post("/approvals/<grant_id>/<verdict>")
@login_required
def decide(grant_id: str, verdict: str) -> Response:
    """Approve or deny a pending request, with an optional comment."""
    service, caller = grant_service(), require_caller()
    comment = request.form.get("comment", "").strip()[:1000] or None
    if verdict == "approve":
        service.approve(caller, grant_id, comment=comment, meta=web_meta())
        return redirect("/approvals?done=approved")  # type: ignore[return-value]
    if verdict == "deny":
        service.deny(caller, grant_id, comment=comment, meta=web_meta())
        return redirect("/approvals?done=denied")  # type: ignore[return-value]
    raise NotFound("Unknown decision; use approve or deny.")


# -- helpers ------------------------------------------------------------------------------------


def _decision(service: GrantService, caller: Caller, entitlement_id: str) -> Decision:
    for decision in service.entitlements(caller, web_meta()):
        if decision.entitlement_id == entitlement_id:
            return decision
    raise NotFound(f"No entitlement {entitlement_id!r}.")


def _durations(decision: Decision) -> list[str]:
    """The choices for "how long", up to the longest grant the policy allows."""
    fitting = [d for d in _DURATION_CHOICES if parse_duration(d) <= decision.max_grant]
    top = format_duration(decision.max_grant)
    if top not in fitting and decision.max_grant >= timedelta(minutes=15):
        fitting.append(top)
    return fitting


def _default_duration(decision: Decision) -> str:
    """The preselected choice: an hour, or the longest allowed when that is shorter."""
    return format_duration(min(DEFAULT_DURATION, decision.max_grant))


def _duration_field(value: str | None) -> timedelta | None:
    if value is None or not value.strip():
        return None
    try:
        return parse_duration(value.strip())
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


def _profile_field(entitlement_id: str) -> str:
    profile = request.form.get("profile", "").strip() or entitlement_id
    if not _PROFILE_RE.match(profile):
        raise BadRequest(
            "The profile name may hold only letters, digits, '.', '_' and '-' (up to 64).",
        )
    return profile
