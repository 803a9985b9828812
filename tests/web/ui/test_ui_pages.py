"""The pages over real parts (moto over HTTP, SQLite and PostgreSQL), driven by the test client."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from uibed import ADMIN, APPROVER, DEV, SRE, Ui, csrf_of

from broker.db import get_database
from broker.models import AuditEvent, Grant

_CODE_RE = r'<code id="{}"[^>]*>([^<]+)</code>'


def _text(response: Any) -> str:
    return html.unescape(response.get_data(as_text=True))


def _code(page: str, element_id: str) -> str:
    match = re.search(_CODE_RE.format(element_id), page)
    assert match, f"no #{element_id} on the page"
    return match.group(1)


def _grant(ui: Ui, entitlement: str) -> Grant:
    with ui.app.app_context(), get_database().session() as session:
        return session.scalars(
            sa.select(Grant).where(Grant.entitlement_id == entitlement).order_by(Grant.created_at)
        ).all()[-1]


def _actions(ui: Ui) -> list[str]:
    with ui.app.app_context(), get_database().session() as session:
        return list(session.scalars(sa.select(AuditEvent.action).order_by(AuditEvent.seq)).all())


def _post(client: Any, path: str, page: str, **data: str) -> Any:
    return client.post(path, data={"csrf_token": csrf_of(page), **data})


def test_home_lists_entitlements_and_why_not(ui: Ui) -> None:
    client = ui.signed_in()
    page = _text(client.get("/"))
    assert 'data-entitlement="app-read"' in page and "Read the app bucket" in page
    refused = re.search(
        r'<li data-entitlement="app-admin"><strong>app-admin</strong>: ([^<]+)', page
    )
    assert refused and refused.group(1).strip()
    assert "You hold no active grants." in page
    assert '<a href="/admin"' not in page and '<a href="/audit"' not in page


def test_request_then_credentials_that_work_on_aws(ui: Ui) -> None:
    client = ui.signed_in()
    form = _text(client.get("/request/app-read"))
    assert '<label for="reason">' in form and '<label for="duration">' in form
    assert '<label for="profile">' in form  # no approval needed: the form gets credentials
    # One step where no approval is needed: the request answers with the credentials.
    first = _post(client, "/request/app-read", form, reason="JIRA-1", duration="1h")
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-store"
    assert "Credentials for app-read" in _text(first)
    home = _text(client.get("/"))
    grant = _grant(ui, "app-read")
    assert f'data-grant="{grant.id}"' in home and 'class="countdown"' in home
    assert grant.duration_seconds == 3600
    response = _post(client, "/credentials/app-read", home, profile="work")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = _text(response)
    key, secret, token = (
        _code(page, "aws-access-key-id"),
        _code(page, "aws-secret-access-key"),
        _code(page, "aws-session-token"),
    )
    sts = ui.moto.client("sts", access_key_id=key, secret_access_key=secret, session_token=token)
    role_name = ui.roles["read"].rsplit("/", 1)[1]
    assert f"assumed-role/{role_name}/" in sts.get_caller_identity()["Arn"]
    assert f"export AWS_SECRET_ACCESS_KEY='{secret}'" in page
    assert "export AWS_REGION='us-east-1'" in page and "export AWS_DEFAULT_REGION=" in page
    assert f"set -gx AWS_SESSION_TOKEN '{token}'" in page
    assert f"$Env:AWS_ACCESS_KEY_ID = '{key}'" in page
    assert f"[work]\naws_access_key_id = {key}\naws_secret_access_key = {secret}" in page
    assert "[profile work]\nregion = us-east-1" in page
    assert "broker creds app-read --profile work" in page
    console = re.search(r'id="console-link" class="button" href="([^"]+)"', page)
    assert console, "no console link"
    link = parse_qs(urlsplit(console.group(1)).query)
    assert link["Action"] == ["login"] and link["SigninToken"] == ["stub-signin-token"]
    federation = ui.idp.federation_requests[-1]
    assert federation["Action"] == ["getSigninToken"]
    assert 900 <= int(federation["SessionDuration"][0]) <= 3600
    assert "issue" in " ".join(_actions(ui))
    assert secret not in " ".join(str(e) for e in _actions(ui))


def test_profile_name_is_checked(ui: Ui) -> None:
    client = ui.signed_in()
    home = _text(client.get("/"))
    response = _post(client, "/credentials/app-read", home, profile="x]\n[evil")
    assert response.status_code == 400
    assert "profile name" in _text(response)


def test_approval_needs_another_person(ui: Ui) -> None:
    requester = ui.signed_in(SRE)
    form = _text(requester.get("/request/app-admin"))
    assert "needs an approver" in form
    pending = _post(requester, "/request/app-admin", form, reason="INC-7", duration="1h")
    assert "Request pending approval" in _text(pending)
    grant = _grant(ui, "app-admin")
    assert grant.status == "pending"
    own = _text(requester.get("/approvals"))
    assert "Nothing is waiting for you." in own and "you cannot approve your own" in own
    refused = requester.post(
        f"/approvals/{grant.id}/approve", data={"csrf_token": csrf_of(own), "comment": "me"}
    )
    assert refused.status_code == 403
    assert "cannot approve or deny your own" in _text(refused)
    approver = ui.signed_in(APPROVER)
    page = _text(approver.get("/approvals"))
    assert f'data-grant="{grant.id}"' in page and "sam@example.com asks for app-admin" in page
    done = _post(approver, f"/approvals/{grant.id}/approve", page, comment="ok for INC-7")
    assert done.status_code == 302 and done.location == "/approvals?done=approved"
    assert _grant(ui, "app-admin").status == "active"
    assert "app-admin" in _text(requester.get("/"))
    assert "grant.approve" in _actions(ui)


def test_deny_with_comment(ui: Ui) -> None:
    requester = ui.signed_in(SRE)
    form = _text(requester.get("/request/app-admin"))
    _post(requester, "/request/app-admin", form, reason="curious")
    grant = _grant(ui, "app-admin")
    approver = ui.signed_in(APPROVER)
    page = _text(approver.get("/approvals"))
    _post(approver, f"/approvals/{grant.id}/deny", page, comment="not without a ticket")
    denied = _grant(ui, "app-admin")
    assert denied.status == "denied" and denied.decision_comment == "not without a ticket"


def test_admin_revokes_and_audit_shows_it(ui: Ui) -> None:
    dev = ui.signed_in(DEV)
    form = _text(dev.get("/request/app-read"))
    _post(dev, "/request/app-read", form, reason="JIRA-2")
    home = _text(dev.get("/"))
    _post(dev, "/credentials/app-read", home)
    grant = _grant(ui, "app-read")
    assert f'data-grant="{grant.id}"' in _text(dev.get("/"))
    admin = ui.signed_in(ADMIN)
    page = _text(admin.get("/admin"))
    assert f'data-grant="{grant.id}"' in page
    assert "Live AWS sessions" in page and "dev@example.com" in page
    # Revoking takes a confirmation step: the link opens it, and a POST without `confirm`
    # shows it again instead of acting.
    assert f'href="/admin/grants/{grant.id}"' in page
    confirm = _text(admin.get(f"/admin/grants/{grant.id}"))
    assert "Revoke app-read of dev@example.com?" in confirm and 'name="confirm"' in confirm
    unconfirmed = _post(admin, f"/admin/grants/{grant.id}/revoke", confirm, reason="left")
    assert unconfirmed.status_code == 200 and "Revoke grant" in _text(unconfirmed)
    assert _grant(ui, "app-read").status == "active"
    response = _post(
        admin, f"/admin/grants/{grant.id}/revoke", confirm, reason="left the team", confirm="yes"
    )
    assert response.status_code == 302
    assert f'data-grant="{grant.id}"' not in _text(dev.get("/"))
    admin_page = _text(admin.get("/admin"))
    assert "Revocations pending on AWS" in admin_page and "person" in admin_page
    audit = _text(admin.get("/audit", query_string={"action": "grant.revoked"}))
    assert 'data-action="grant.revoked"' in audit and "left the team" in audit
    assert 'href="/audit/export?format=csv&amp;action=grant.revoked"' in admin.get(
        "/audit", query_string={"action": "grant.revoked"}
    ).get_data(as_text=True)


def test_admin_and_audit_pages_are_refused_to_others(ui: Ui) -> None:
    dev = ui.signed_in(DEV)
    for path in ("/admin", "/audit"):
        response = dev.get(path)
        assert response.status_code == 403
        assert "names as" in _text(response)


def test_audit_filters_by_date_and_rejects_bad_dates(ui: Ui) -> None:
    admin = ui.signed_in(ADMIN)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    page = _text(admin.get("/audit", query_string={"since": today, "until": today}))
    assert 'data-action="auth.sign_in"' in page
    page = _text(admin.get("/audit", query_string={"until": "2000-01-01"}))
    assert "No events match." in page
    bad = admin.get("/audit", query_string={"since": "yesterday"})
    assert bad.status_code == 400 and "expected a date" in _text(bad)


def test_owner_ends_own_grant(ui: Ui) -> None:
    dev = ui.signed_in(DEV)
    form = _text(dev.get("/request/app-read"))
    _post(dev, "/request/app-read", form)
    grant = _grant(ui, "app-read")
    home = _text(dev.get("/"))
    response = _post(dev, f"/grants/{grant.id}/revoke", home)
    assert response.status_code == 302
    assert _grant(ui, "app-read").status == "revoked"
    assert "Grant ended." in _text(dev.get("/?done=revoked"))


def test_cut_off_and_re_enable(ui: Ui) -> None:
    dev = ui.signed_in(DEV)
    admin = ui.signed_in(ADMIN)
    page = _text(admin.get("/admin", query_string={"q": "dev@"}))
    match = re.search(r'href="/admin/people/([0-9a-f]+)"', page)
    assert match
    person = match.group(1)
    confirm = _text(admin.get(f"/admin/people/{person}"))
    assert "Cut off dev@example.com?" in confirm and 'name="confirm"' in confirm
    missing = _post(admin, f"/admin/people/{person}/cut-off", confirm, reason="", confirm="yes")
    assert missing.status_code == 400
    unconfirmed = _post(admin, f"/admin/people/{person}/cut-off", confirm, reason="contract")
    assert unconfirmed.status_code == 200 and 'name="confirm"' in _text(unconfirmed)
    assert dev.get("/").status_code == 200  # nothing happened without the confirmation
    _post(admin, f"/admin/people/{person}/cut-off", confirm, reason="contract ended", confirm="yes")
    assert dev.get("/").status_code == 403
    page = _text(admin.get("/admin"))
    assert "cut off" in page and f"/admin/people/{person}/restore" in page
    _post(admin, f"/admin/people/{person}/restore", page)
    assert ui.signed_in(DEV).get("/").status_code == 200
    assert {"principal.cut_off", "principal.restore"} <= set(_actions(ui))
