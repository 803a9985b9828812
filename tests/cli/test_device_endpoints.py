"""The RFC 8628 endpoints and the /device page, through the Flask test client."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from broker.auth.device import GRANT_TYPE, USER_CODE_ALPHABET, DeviceFlow, DeviceSettings
from broker.auth.websession import SESSION_COOKIE, start_session
from broker.db import get_database
from broker.grants import Caller, RequestMeta
from broker.models import ApiToken, AuditEvent, DeviceAuthorization, utcnow
from broker.policy import Identity
from broker.policy_store import get_policy
from broker.services import grant_service
from broker.web.oauth import device_flow

CODE_RE = re.compile(rf"^[{USER_CODE_ALPHABET}]{{4}}-[{USER_CODE_ALPHABET}]{{4}}$")
# The CSRF field of the device form (not the sign-out form in the page header).
CSRF_RE = re.compile(r'action="/device">\s*<input type="hidden" name="csrf_token" value="([^"]+)"')
DEV = Identity(
    issuer="urn:test",
    subject="dev@example.com",
    email="dev@example.com",
    groups=frozenset({"developers"}),
    amr=("pwd", "mfa"),
)


def start(client: FlaskClient, **form: str) -> Any:
    data = {"client_id": "broker-cli", "scope": "broker", **form}
    return client.post(
        "/oauth/device_authorization", data=data, headers={"User-Agent": "broker-cli/test"}
    )


def poll(client: FlaskClient, device_code: str, **form: str) -> Any:
    data = {"grant_type": GRANT_TYPE, "device_code": device_code, "client_id": "broker-cli", **form}
    return client.post("/oauth/token", data=data)


def caller(app: Flask, identity: Identity = DEV) -> Caller:
    with app.app_context():
        return grant_service().sign_in(identity, RequestMeta(client="web"))


def decide(app: Flask, user_code: str, approve: bool = True, identity: Identity = DEV) -> None:
    person = caller(app, identity)
    with app.test_request_context():
        flow = device_flow()
        (flow.approve if approve else flow.deny)(user_code, person, RequestMeta(client="web"))


def backdate(app: Flask, user_code: str, **changes: Any) -> None:
    with app.app_context(), get_database().session() as session:
        session.execute(
            sa.update(DeviceAuthorization)
            .where(DeviceAuthorization.user_code == user_code)
            .values(**changes)
        )


def actions(app: Flask) -> list[str]:
    with app.app_context(), get_database().session() as session:
        return list(session.scalars(sa.select(AuditEvent.action).order_by(AuditEvent.seq)))


@pytest.fixture
def app(live: Any) -> Flask:
    return live.bed.app  # type: ignore[no-any-return]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_device_authorization_answer(app: Flask, client: FlaskClient) -> None:
    response = start(client)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert CODE_RE.match(body["user_code"])
    assert len(body["device_code"]) >= 43
    assert body["verification_uri"] == "http://localhost/device"
    assert (
        body["verification_uri_complete"]
        == f"http://localhost/device?user_code={body['user_code']}"
    )
    assert body["expires_in"] == 600
    assert body["interval"] == 1
    with app.app_context(), get_database().session() as session:
        row = session.scalar(sa.select(DeviceAuthorization))
        assert row is not None
        assert row.device_code_hash != body["device_code"]  # stored only hashed
        assert body["device_code"] not in str(
            session.execute(sa.text("SELECT * FROM device_authorizations")).all()
        )
        assert row.requester_agent == "broker-cli/test"
    assert "device.authorize" in actions(app)


def test_unknown_client_and_wrong_encoding(client: FlaskClient) -> None:
    response = start(client, client_id="evil")
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    response = client.post("/oauth/device_authorization", json={"client_id": "broker-cli"})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_each_token_error(app: Flask, client: FlaskClient) -> None:
    body = start(client).get_json()
    code = body["device_code"]

    first = poll(client, code)
    assert first.status_code == 400
    assert first.get_json()["error"] == "authorization_pending"
    assert first.headers["Cache-Control"] == "no-store"

    # Polled again at once, faster than the 1 s interval: slow_down, and the interval grows by 5 s.
    fast = poll(client, code)
    assert fast.get_json()["error"] == "slow_down"
    faster = poll(client, code)
    assert faster.get_json()["error"] == "slow_down"
    with app.app_context(), get_database().session() as session:
        row = session.scalar(sa.select(DeviceAuthorization))
        assert row is not None and row.interval == 11

    # Once the (grown) interval has passed, the answer is pending again, not slow_down.
    backdate(app, body["user_code"], last_polled_at=utcnow() - timedelta(seconds=12))
    assert poll(client, code).get_json()["error"] == "authorization_pending"

    assert poll(client, "not-a-code").get_json()["error"] == "invalid_grant"
    assert poll(client, code, client_id="other").status_code == 401
    assert (
        poll(client, code, grant_type="authorization_code").get_json()["error"]
        == "unsupported_grant_type"
    )
    assert poll(client, "").get_json()["error"] == "invalid_request"

    backdate(app, body["user_code"], expires_at=utcnow() - timedelta(seconds=1))
    expired = poll(client, code)
    assert expired.status_code == 400
    assert expired.get_json()["error"] == "expired_token"


def test_denied(app: Flask, client: FlaskClient) -> None:
    body = start(client).get_json()
    decide(app, body["user_code"], approve=False)
    answer = poll(client, body["device_code"])
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "access_denied"
    assert "device.deny" in actions(app)


def test_approved_code_gives_a_device_token_once(app: Flask, client: FlaskClient) -> None:
    body = start(client).get_json()
    decide(app, body["user_code"].lower().replace("-", " "))  # typed loosely: still matches
    answer = poll(client, body["device_code"])
    assert answer.status_code == 200, answer.get_json()
    token = answer.get_json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 8 * 3600
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert me.status_code == 200
    assert me.get_json()["email"] == "dev@example.com"
    assert me.get_json()["groups"] == ["developers"]
    with app.app_context(), get_database().session() as session:
        row = session.scalar(sa.select(ApiToken).where(ApiToken.kind == "device"))
        assert row is not None
        assert row.token_hash != token["access_token"]
        # The token carries how its sign-in was made; the person's attributes (email, groups)
        # stay on their principal row, where they are refreshed from the provider when stale.
        assert row.claims == {"amr": ["pwd", "mfa"]}
        assert row.expires_at - row.created_at == timedelta(hours=8)
    # The device code is single-use.
    assert poll(client, body["device_code"]).get_json()["error"] == "invalid_grant"
    assert {"device.authorize", "device.approve", "device.token"} <= set(actions(app))


def test_admin_cut_off_revokes_device_tokens(app: Flask, client: FlaskClient) -> None:
    body = start(client).get_json()
    decide(app, body["user_code"])
    token = poll(client, body["device_code"]).get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    admin = caller(
        app,
        Identity(
            issuer="urn:test",
            subject="ada",
            email="ada@example.com",
            groups=frozenset({"security-admins"}),
        ),
    )
    person = caller(app)
    with app.app_context():
        grant_service().cut_off(admin, person.principal_id, reason="left", meta=RequestMeta())
    assert client.get("/api/v1/me", headers=headers).status_code in (401, 403)


def test_approved_but_cut_off_before_polling(app: Flask, client: FlaskClient) -> None:
    body = start(client).get_json()
    decide(app, body["user_code"])
    admin = caller(
        app,
        Identity(
            issuer="urn:test",
            subject="ada",
            email="ada@example.com",
            groups=frozenset({"security-admins"}),
        ),
    )
    with app.app_context():
        grant_service().cut_off(admin, caller(app).principal_id, reason="left", meta=RequestMeta())
    assert poll(client, body["device_code"]).get_json()["error"] == "access_denied"


def test_revoke_endpoint(app: Flask, client: FlaskClient) -> None:
    body = start(client).get_json()
    decide(app, body["user_code"])
    token = poll(client, body["device_code"]).get_json()["access_token"]
    answer = client.post("/oauth/revoke", data={"token": token, "client_id": "broker-cli"})
    assert answer.status_code == 200
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert (
        client.post(
            "/oauth/revoke", data={"token": "brk_unknown", "client_id": "broker-cli"}
        ).status_code
        == 200
    )
    assert "device.token.revoke" in actions(app)


def test_settings_are_checked() -> None:
    assert DeviceSettings.from_config({}).token_ttl == timedelta(hours=8)
    with pytest.raises(Exception, match="BROKER_DEVICE_TOKEN_TTL_SECONDS"):
        DeviceSettings.from_config({"DEVICE_TOKEN_TTL_SECONDS": "forever"})


def test_service_rejects_unknown_codes(app: Flask) -> None:
    person = caller(app)
    with app.app_context():
        flow = DeviceFlow(
            get_database(), settings=DeviceSettings(), policy_version=get_policy().version
        )
        for bad in ("AAAA-AAAA", "BCDF-GHJ", "BCDF-GHJK"):
            with pytest.raises(Exception, match="code"):
                flow.approve(bad, person, RequestMeta())


# -- the /device page ---------------------------------------------------------------------------


def browser(app: Flask, identity: Identity = DEV) -> FlaskClient:
    """A test client with a live web session for `identity` (as after web sign-in)."""
    person = caller(app, identity)
    claims = {
        "iss": identity.issuer,
        "sub": identity.subject,
        "email": identity.email,
        "groups": sorted(identity.groups),
        "amr": list(identity.amr),
    }
    with app.test_request_context():
        value, _ = start_session(person.principal_id, claims, now=utcnow())
    web = app.test_client()
    web.set_cookie(SESSION_COOKIE, value, domain="localhost")
    return web


def test_device_page_needs_sign_in(client: FlaskClient) -> None:
    response = client.get("/device?user_code=BCDF-GHJK")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")
    assert "user_code" in response.headers["Location"]


def test_device_page_shows_request_and_approves(app: Flask, client: FlaskClient) -> None:
    body = start(client).get_json()
    web = browser(app)
    assert "Enter the code" in web.get("/device").get_data(as_text=True)
    page = web.get(f"/device?user_code={body['user_code']}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html
    assert body["user_code"] in html
    assert "127.0.0.1" in html
    assert "broker-cli/test" in html
    assert "Approve" in html and "Deny" in html

    # Without the session's CSRF token nothing happens.
    refused = web.post("/device", data={"user_code": body["user_code"], "decision": "approve"})
    assert refused.status_code == 403
    assert poll(client, body["device_code"]).get_json()["error"] == "authorization_pending"

    csrf = CSRF_RE.search(html)
    assert csrf
    done = web.post(
        "/device",
        data={"user_code": body["user_code"], "decision": "approve", "csrf_token": csrf.group(1)},
    )
    assert done.status_code == 200
    assert "Approved" in done.get_data(as_text=True)
    backdate(app, body["user_code"], last_polled_at=utcnow() - timedelta(seconds=5))
    assert poll(client, body["device_code"]).status_code == 200


def test_device_page_deny(app: Flask, client: FlaskClient) -> None:
    body = start(client).get_json()
    web = browser(app)
    html = web.get(f"/device?user_code={body['user_code']}").get_data(as_text=True)
    csrf = CSRF_RE.search(html)
    assert csrf
    done = web.post(
        "/device",
        data={"user_code": body["user_code"], "decision": "deny", "csrf_token": csrf.group(1)},
    )
    assert "Denied" in done.get_data(as_text=True)
    assert poll(client, body["device_code"]).get_json()["error"] == "access_denied"


def test_unknown_code_on_page(app: Flask) -> None:
    web = browser(app)
    page = web.get("/device?user_code=BBBB-BBBB")
    assert page.status_code == 404
    assert "No sign-in request is waiting" in page.get_data(as_text=True)
    page = web.get("/device?user_code=<script>")
    assert page.status_code == 404
    assert "<script>" not in page.get_data(as_text=True)


def test_code_entry_is_rate_limited(live: Any) -> None:
    app = live.bed.app
    app.extensions["broker.device"] = DeviceSettings(attempts_per_person=3)
    web = browser(app)
    codes = [web.get("/device?user_code=BBBB-BBBB").status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]
    # The limit is per person in the database: a second browser of the same person is limited too.
    assert browser(app).get("/device?user_code=BBBB-BBBB").status_code == 429
