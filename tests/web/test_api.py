"""The JSON API against real parts: moto server over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from apibed import Bed

from broker.audit import verify_database
from broker.auth.identity import derive_source_identity
from broker.db import get_database
from broker.models import AuditEvent, Grant, IssuedSession

DEV = ("developers",)


def _count(bed: Bed, model: Any, *where: Any) -> int:
    with bed.app.app_context(), get_database().session() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)))


def _events(bed: Bed, action: str) -> list[AuditEvent]:
    with bed.app.app_context(), get_database().session() as session:
        return list(session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)).all())


def _chain_ok(bed: Bed) -> bool:
    with bed.app.app_context(), get_database().session() as session:
        return verify_database(session).ok


def _issue(bed: Bed, token: str, entitlement: str = "app-read", **extra: Any) -> Any:
    return bed.call("POST", "/credentials", token, json={"entitlement": entitlement, **extra})


def test_issued_credentials_work_against_sts(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    response = _issue(bed, token, duration="1h")
    assert response.status_code == 201, response.json
    body = response.json
    creds = body["credentials"]
    assert response.headers["Cache-Control"] == "no-store"
    sts = bed.moto.client(
        "sts",
        access_key_id=creds["AccessKeyId"],
        secret_access_key=creds["SecretAccessKey"],
        session_token=creds["SessionToken"],
    )
    arn = sts.get_caller_identity()["Arn"]
    role_name = bed.roles["read"].rsplit("/", 1)[1]
    assert arn == f"arn:aws:sts::123456789012:assumed-role/{role_name}/{body['role_session_name']}"
    assert body["source_identity"] == derive_source_identity("urn:test", "dev@example.com")
    assert body["duration_seconds"] == 3600
    second = _issue(bed, token).json
    assert second["role_session_name"] != body["role_session_name"]
    assert second["grant_id"] == body["grant_id"]  # reuses the active grant
    issued = _events(bed, "credentials.issued")
    assert len(issued) == 2
    assert {e.details["role_session_name"] for e in issued} == {
        body["role_session_name"],
        second["role_session_name"],
    }
    assert _count(bed, IssuedSession) == 2
    assert _chain_ok(bed)


def test_me_and_entitlements_explain_the_rest(bed: Bed) -> None:
    token = bed.token("cora@contractor.example", DEV)
    me = bed.call("GET", "/me", token).json
    assert me["kind"] == "contractor" and me["sponsor"] == "lead@example.com"
    assert me["valid_until"] is not None
    decisions = {d["id"]: d for d in bed.call("GET", "/entitlements", token).json["entitlements"]}
    assert decisions["app-read"]["allowed"] is True
    assert decisions["prod-read"]["allowed"] is False
    assert "Contractors never get production access" in " ".join(decisions["prod-read"]["reasons"])
    assert decisions["app-admin"]["allowed"] is False


def test_contractor_end_date_caps_the_session(bed: Bed) -> None:
    token = bed.token("cora@contractor.example", DEV)
    response = _issue(bed, token, duration="2h")
    assert response.status_code == 201, response.json
    assert 35 * 60 <= response.json["duration_seconds"] <= 40 * 60
    expires = datetime.fromisoformat(response.json["credentials"]["Expiration"])
    me = bed.call("GET", "/me", token).json
    assert expires <= datetime.fromisoformat(me["valid_until"]) + timedelta(seconds=1)


def test_grant_end_caps_the_session(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    grant = bed.call("POST", "/grants", token, json={"entitlement": "app-read", "duration": "20m"})
    assert grant.status_code == 201, grant.json
    response = _issue(bed, token, duration="2h")
    assert response.status_code == 201, response.json
    assert 19 * 60 <= response.json["duration_seconds"] <= 20 * 60
    assert response.json["grant_id"] == grant.json["grant"]["id"]


def test_role_maximum_caps_the_session(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    response = _issue(bed, token, duration="2h")  # entitlement allows 2h, the role only 1h
    assert response.status_code == 201, response.json
    assert response.json["duration_seconds"] == 3600


def test_approval_flow_needs_another_person(bed: Bed) -> None:
    sre = bed.token("sam@example.com", ("sre", "security"))
    approver = bed.token("sec@example.com", ("security",))
    no_reason = bed.call("POST", "/grants", sre, json={"entitlement": "app-admin"})
    assert no_reason.status_code == 400 and "reason" in no_reason.json["message"]
    requested = bed.call(
        "POST", "/grants", sre, json={"entitlement": "app-admin", "reason": "INC-42"}
    )
    assert requested.status_code == 202 and requested.json["grant"]["status"] == "pending"
    grant_id = requested.json["grant"]["id"]
    blocked = _issue(bed, sre, "app-admin")
    assert blocked.status_code == 403 and blocked.json["code"] == "approval_required"
    own = bed.call("POST", f"/grants/{grant_id}/approve", sre, json={})
    assert own.status_code == 403 and "own request" in own.json["message"]
    pending = bed.call("GET", "/approvals", approver).json["grants"]
    assert [g["id"] for g in pending] == [grant_id]
    ok = bed.call("POST", f"/grants/{grant_id}/approve", approver, json={"comment": "go"})
    assert ok.status_code == 200 and ok.json["grant"]["status"] == "active"
    assert ok.json["grant"]["decided_by"] == "sec@example.com"
    issued = _issue(bed, sre, "app-admin")
    assert issued.status_code == 201 and issued.json["grant_id"] == grant_id
    assert len(_events(bed, "grant.approve")) == 1


def test_owner_revokes_and_credentials_are_refused_after(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    issued = _issue(bed, token).json
    revoked = bed.call("POST", f"/grants/{issued['grant_id']}/revoke", token, json={})
    assert revoked.status_code == 200 and revoked.json["grant"]["status"] == "revoked"
    again = bed.call("POST", f"/grants/{issued['grant_id']}/revoke", token, json={})
    assert again.status_code == 409
    assert len(_events(bed, "grant.revoked")) == 1


def test_bad_requests_are_clear_and_write_nothing_but_the_denial(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    cases = [
        (_issue(bed, token, "no-such-thing"), 403, "policy_denied"),
        (_issue(bed, token, duration="5m"), 400, "bad_request"),
        (_issue(bed, token, duration="13h"), 400, "bad_request"),
        (
            bed.call(
                "POST",
                "/credentials",
                token,
                data="{not json",
                headers={"Content-Type": "application/json"},
            ),
            400,
            "bad_request",
        ),
        (_issue(bed, token, surprise=1), 400, "bad_request"),
        (bed.call("POST", "/credentials", token, json={"entitlement": "x" * 200_000}), 413, None),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.status_code, response.json)
        assert response.json["message"]
        if code:
            assert response.json["code"] == code
    assert _count(bed, Grant) == 0 and _count(bed, IssuedSession) == 0
    assert len(_events(bed, "credentials.issue")) >= 1  # the denial of no-such-thing
    assert all(e.decision == "deny" for e in _events(bed, "credentials.issue"))
    assert _chain_ok(bed)


def test_mfa_requirement_reads_amr(bed: Bed) -> None:
    without = bed.token("dev@example.com", DEV, amr=("pwd",))
    denied = _issue(bed, without, "prod-read")
    assert denied.status_code == 403 and "multi-factor" in denied.json["message"]
    with_mfa = bed.token("dev2@example.com", DEV, amr=("pwd", "mfa"))
    assert _issue(bed, with_mfa, "prod-read").status_code == 201


def test_missing_expired_and_forged_tokens_are_refused(bed: Bed) -> None:
    expired = bed.token("old@example.com", DEV, ttl=timedelta(seconds=-1))
    cases = {
        "missing": bed.call("GET", "/me", None),
        "expired": bed.call("GET", "/me", expired),
        "forged": bed.call("GET", "/me", "brk_" + "A" * 43),
        "garbage-jwt": bed.call("GET", "/me", "eyJhbGciOiJub25lIn0.e30."),
    }
    for name, response in cases.items():
        assert response.status_code == 401, name
        assert response.json["code"] in ("unauthenticated", "invalid_token"), name
    assert "expired" in cases["expired"].json["message"]
    assert _count(bed, Grant) == 0


def test_openapi_and_probes(bed: Bed) -> None:
    doc = bed.client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert {"/me", "/entitlements", "/grants", "/credentials"} <= set(doc["paths"])
    assert bed.client.get("/healthz").json["status"] == "ok"
    ready = bed.client.get("/readyz")
    assert ready.status_code == 200, ready.json
    assert ready.headers["X-Request-Id"]


def test_issuance_is_rate_limited_per_person(bed: Bed) -> None:
    bed.app.config["RATE_LIMIT_ISSUE_PER_MINUTE"] = 2
    token = bed.token("dev@example.com", DEV)
    statuses = [_issue(bed, token).status_code for _ in range(3)]
    assert statuses[:2] == [201, 201]
    if statuses[2] == 201:  # the minute window rolled over between calls; try once more
        statuses.append(_issue(bed, token).status_code)
    limited = _issue(bed, token)
    assert limited.status_code == 429 and limited.json["code"] == "rate_limited"
    other = bed.token("other@example.com", DEV)
    assert _issue(bed, other).status_code == 201  # per person, not global


def test_unknown_grant_action_is_a_clear_404(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    response = bed.call("POST", "/grants/abc/explode", token, json={})
    assert response.status_code == 404 and response.json["code"] == "not_found"
    assert "approve, deny or revoke" in response.json["message"]


def test_hostile_json_answers_400_and_issues_nothing(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = {
        "deep": b'{"entitlement": "app-read", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        "huge number": b'{"entitlement": "app-read", "duration": ' + b"9" * 5000 + b"}",
        "not json": b'{"entitlement": ',
        "not an object": b'["app-read"]',
        "bad utf-8": b'{"entitlement": "\xff"}',
    }
    for name, raw in bodies.items():
        response = bed.client.post("/api/v1/credentials", data=raw, headers=headers)
        assert response.status_code == 400, (name, response.status_code, response.get_data())
        assert response.json["code"] == "bad_request", name
    with bed.app.app_context(), get_database().session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(IssuedSession)) == 0
