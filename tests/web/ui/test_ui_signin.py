"""Web sign-in: the happy path, and every forged or replayed callback refused and audited."""

from __future__ import annotations

import html
import re
import time
from typing import Any

import pytest
import sqlalchemy as sa
from uibed import DEV, Ui, csrf_of, make_ui
from webstubs import CLIENT_ID, CLIENT_SECRET

from broker.audit import verify_database
from broker.db import get_database
from broker.models import AuditEvent, LoginAttempt, WebSession


def _events(ui: Ui, action: str) -> list[AuditEvent]:
    with ui.app.app_context(), get_database().session() as session:
        return list(
            session.scalars(
                sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            ).all()
        )


def _failure_codes(ui: Ui) -> list[str]:
    return [e.details["code"] for e in _events(ui, "auth.sign_in_failed")]


def _assert_refused(response: Any, status: int, text: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    body = html.unescape(response.get_data(as_text=True))
    assert text in body, body
    assert "broker_session" not in response.headers.get("Set-Cookie", "")


def test_sign_in_starts_a_server_side_session(ui: Ui) -> None:
    client = ui.browser()
    location = ui.start_login(client, "/approvals")
    assert "code_challenge_method=S256" in location
    assert "nonce=" in location and "state=" in location
    binding = client.get_cookie("browser_binding")
    assert binding is not None and binding.http_only and binding.same_site == "Lax"
    params = ui.idp.expect(location, lambda nonce: ui.idp.sign(ui.idp.claims(nonce, **DEV)))
    response = client.get(
        "/auth/callback", query_string={"code": params["code"], "state": params["state"]}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/approvals"
    cookie = client.get_cookie("broker_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    # the token request carried the PKCE verifier and authenticated the client
    last = ui.idp.token_requests[-1]
    assert last["code_verifier"] and last["authorization"].startswith("Basic ")
    assert last["redirect_uri"] == "http://localhost/auth/callback"
    # the database keeps only a hash of the cookie
    with ui.app.app_context(), get_database().session() as session:
        rows = session.scalars(sa.select(WebSession)).all()
    assert len(rows) == 1 and rows[0].id_hash != cookie.value and "nonce" not in rows[0].claims
    home = client.get("/")
    assert home.status_code == 200
    assert "dev@example.com" in home.get_data(as_text=True)
    [event] = _events(ui, "auth.sign_in")
    assert event.actor == "dev@example.com" and event.decision == "allow"
    assert event.details["amr"] == ["pwd", "mfa"]


def test_secure_cookie_with_host_prefix_on_https(
    database: Any, moto_server: Any, stub_issuer: Any, tmp_path: Any
) -> None:
    ui = make_ui(database, moto_server, stub_issuer, tmp_path, BASE_URL="https://broker.test")
    try:
        client = ui.browser()
        response = client.get("/login", base_url="https://broker.test")
        assert "__Host-browser_binding=" in response.headers["Set-Cookie"]
        assert "Secure" in response.headers["Set-Cookie"]
        assert "redirect_uri=https%3A%2F%2Fbroker.test%2Fauth%2Fcallback" in response.location
        assert "max-age=31536000" in response.headers["Strict-Transport-Security"]
    finally:
        ui.app.extensions["broker.db"].dispose()


def test_new_session_id_at_every_sign_in(ui: Ui) -> None:
    client = ui.browser()
    mint = lambda n: ui.idp.sign(ui.idp.claims(n))  # noqa: E731
    first_try = ui.idp.expect(ui.start_login(client), mint)
    second_try = ui.idp.expect(ui.start_login(client), mint)  # e.g. a second tab
    assert client.get("/auth/callback", query_string=first_try).status_code == 302
    first = client.get_cookie("broker_session")
    assert first is not None
    assert client.get("/auth/callback", query_string=second_try).status_code == 302
    second = client.get_cookie("broker_session")
    assert second is not None and second.value != first.value
    with ui.app.app_context(), get_database().session() as session:
        rows = session.scalars(sa.select(WebSession).order_by(WebSession.created_at)).all()
    assert [r.ended_at is not None for r in rows] == [True, False]


def test_logout_ends_session_and_uses_end_session_endpoint(ui: Ui) -> None:
    client = ui.signed_in()
    token = csrf_of(client.get("/").get_data(as_text=True))
    response = client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 302
    assert response.location.startswith(f"{ui.idp.issuer}/logout?")
    assert f"client_id={CLIENT_ID}" in response.location
    assert "post_logout_redirect_uri=http%3A%2F%2Flocalhost%2Fsigned-out" in response.location
    assert client.get_cookie("broker_session") is None
    assert client.get("/").status_code == 302  # back to sign-in
    [event] = _events(ui, "auth.sign_out")
    assert event.actor == "dev@example.com"
    assert "signed out" in client.get("/signed-out").get_data(as_text=True)


def test_idle_and_absolute_timeouts(ui: Ui) -> None:
    client = ui.signed_in()
    with ui.app.app_context(), get_database().session() as session:
        row = session.scalars(sa.select(WebSession)).one()
        row.last_seen_at = row.last_seen_at.replace(year=2000)
    assert client.get("/").status_code == 302
    client = ui.signed_in()
    with ui.app.app_context(), get_database().session() as session:
        row = session.scalars(sa.select(WebSession).where(WebSession.ended_at.is_(None))).one()
        row.expires_at = row.created_at
    response = client.get("/")
    assert response.status_code == 302 and response.location.startswith("/login?next=")


# -- refused callbacks --------------------------------------------------------------------------


def test_callback_without_state(ui: Ui) -> None:
    client = ui.browser()
    _assert_refused(client.get("/auth/callback?code=abc"), 401, "carried no state")
    assert _failure_codes(ui) == ["missing_state"]


def test_callback_with_reused_state(ui: Ui) -> None:
    client = ui.browser()
    location = ui.start_login(client)
    params = ui.idp.expect(location, lambda n: ui.idp.sign(ui.idp.claims(n)))
    query = {"code": params["code"], "state": params["state"]}
    assert client.get("/auth/callback", query_string=query).status_code == 302
    _assert_refused(client.get("/auth/callback", query_string=query), 401, "already used")
    assert _failure_codes(ui) == ["reused_state"]


def test_callback_with_unknown_state(ui: Ui) -> None:
    client = ui.browser()
    ui.start_login(client)
    response = client.get("/auth/callback?code=abc&state=made-up")
    _assert_refused(response, 401, "does not match any sign-in")
    assert _failure_codes(ui) == ["unknown_state"]


def test_callback_with_foreign_state(ui: Ui) -> None:
    """An attacker starts a sign-in and gets a victim's browser to finish it (login CSRF)."""
    attacker, victim = ui.browser(), ui.browser()
    location = ui.start_login(attacker)
    params = ui.idp.expect(location, lambda n: ui.idp.sign(ui.idp.claims(n)))
    response = victim.get(
        "/auth/callback", query_string={"code": params["code"], "state": params["state"]}
    )
    _assert_refused(response, 401, "started in another browser")
    assert _failure_codes(ui) == ["foreign_state"]
    assert ui.idp.token_requests == [] or ui.idp.token_requests[-1]["code"] != params["code"]
    # and the state is burnt: the attacker cannot use it afterwards either
    again = attacker.get(
        "/auth/callback", query_string={"code": params["code"], "state": params["state"]}
    )
    _assert_refused(again, 401, "already used")


def test_callback_with_expired_state(ui: Ui) -> None:
    client = ui.browser()
    location = ui.start_login(client)
    params = ui.idp.expect(location, lambda n: ui.idp.sign(ui.idp.claims(n)))
    with ui.app.app_context(), get_database().session() as session:
        row = session.scalars(sa.select(LoginAttempt)).one()
        row.expires_at = row.created_at
    response = client.get("/auth/callback", query_string=params)
    _assert_refused(response, 401, "longer than 10 minutes")
    assert _failure_codes(ui) == ["expired_state"]


def test_callback_with_provider_error(ui: Ui) -> None:
    client = ui.browser()
    location = ui.start_login(client)
    params = ui.idp.expect(location, lambda n: "")
    response = client.get(
        "/auth/callback", query_string={"error": "access_denied", "state": params["state"]}
    )
    _assert_refused(response, 401, "access_denied")
    assert _failure_codes(ui) == ["provider_error"]


def test_callback_with_mixed_up_issuer(ui: Ui) -> None:
    client = ui.browser()
    location = ui.start_login(client)
    params = ui.idp.expect(location, lambda n: ui.idp.sign(ui.idp.claims(n)))
    response = client.get(
        "/auth/callback",
        query_string={"code": params["code"], "state": params["state"], "iss": "https://evil"},
    )
    _assert_refused(response, 401, "not our provider")
    assert _failure_codes(ui) == ["issuer_mismatch"]


FORGERIES = {
    "alg_none": (lambda idp, n: idp.unsigned(idp.claims(n)), "algorithm 'none' is not allowed"),
    "hs256_public_key": (
        lambda idp, n: idp.hs256_with_public_key(idp.claims(n)),
        "algorithm 'HS256' is not allowed",
    ),
    "wrong_iss": (
        lambda idp, n: idp.sign(idp.claims(n, iss="https://evil.example")),
        "Invalid claim: 'iss'",
    ),
    "wrong_aud": (
        lambda idp, n: idp.sign(idp.claims(n, aud="someone-else")),
        "Invalid claim: 'aud'",
    ),
    "expired": (
        lambda idp, n: idp.sign(
            idp.claims(n, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
        ),
        "has expired",
    ),
    "wrong_nonce": (
        lambda idp, n: idp.sign(idp.claims("not-the-nonce")),
        "nonce does not match",
    ),
    "unknown_kid": (
        lambda idp, n: idp.sign(idp.claims(n), key=idp.rogue),
        "unknown key",
    ),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_id_token_is_refused(ui: Ui, forgery: str) -> None:
    make, message = FORGERIES[forgery]
    client = ui.browser()
    response = ui.sign_in(client, mint=lambda nonce: make(ui.idp, nonce))
    _assert_refused(response, 401, message)
    assert client.get_cookie("broker_session") is None
    [event] = _events(ui, "auth.sign_in_failed")
    assert event.details["code"] == "invalid_id_token" and event.decision == "deny"
    assert message in (event.reason or "")
    assert _events(ui, "auth.sign_in") == []
    with ui.app.app_context(), get_database().session() as session:
        assert verify_database(session).ok


EVIL_NEXT = [
    "//evil.example",
    "https:evil.example",
    "/\\evil.example",
    "%2F%2Fevil.example",
    "javascript:alert(1)",
    "/%2F%2Fevil.example",
    "/%5Cevil.example",
    "/\tevil",
    "https://evil.example/",
]


def test_next_to_another_site_is_refused(ui: Ui) -> None:
    client = ui.browser()
    for target in EVIL_NEXT:
        response = client.get("/login", query_string={"next": target})
        _assert_refused(response, 400, "would send you to another site")
        assert "Location" not in response.headers, target


def test_next_checks_as_a_function() -> None:
    from broker.web.security import is_safe_next

    assert not any(is_safe_next(target) for target in EVIL_NEXT)
    for target in ("/", "/approvals", "/audit?action=grant.revoked&since=2025-01-01", "/a%20b"):
        assert is_safe_next(target), target


def test_next_to_a_broker_page_is_kept(ui: Ui) -> None:
    client = ui.browser()
    response = ui.sign_in(client, next_path="/audit?action=grant")
    assert response.status_code == 302 and response.location == "/audit?action=grant"


def test_unauthenticated_page_redirects_to_login_with_next(ui: Ui) -> None:
    response = ui.browser().get("/approvals")
    assert response.status_code == 302
    assert response.location == "/login?next=%2Fapprovals"


def test_cut_off_person_cannot_sign_in_and_loses_session(ui: Ui) -> None:
    admin = ui.signed_in({"sub": "ada", "email": "ada@example.com", "groups": ["security-admins"]})
    dev = ui.signed_in()
    assert dev.get("/").status_code == 200
    page = admin.get("/admin").get_data(as_text=True)
    match = re.search(r'href="/admin/people/([0-9a-f]+)"', page)  # the confirmation page
    assert match
    response = admin.post(
        f"/admin/people/{match.group(1)}/cut-off",
        data={"csrf_token": csrf_of(page), "reason": "laptop stolen", "confirm": "yes"},
    )
    assert response.status_code == 302
    _assert_refused(dev.get("/"), 403, "cut off by an administrator")
    assert dev.get("/").status_code == 302  # the session is over
    _assert_refused(ui.sign_in(ui.browser()), 403, "cut off by an administrator")
    assert _failure_codes(ui) == ["cut_off"]
    assert CLIENT_SECRET  # the client authenticated at the token endpoint throughout
