"""Issuance against real parts: real permissions, secrets nowhere, failing closed, ID tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from apibed import READ_POLICY, Bed
from iamsim import simulate
from oidc_provider import OidcProvider

from broker import create_app
from broker.auth.identity import derive_source_identity
from broker.db import get_database
from broker.models import Base, Grant, IssuedSession
from broker.services import services

DEV_SI = derive_source_identity("urn:test", "dev@example.com")

DEV = ("developers",)


def _capture_assume_role(bed: Bed) -> list[dict[str, Any]]:
    """Record the parameters the broker really sends to STS AssumeRole."""
    sent: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        sent.append(dict(params))

    with bed.app.app_context():
        services().sts.meta.events.register("provide-client-params.sts.AssumeRole", capture)
    return sent


def test_effective_permissions_match_the_entitlement(bed: Bed) -> None:
    sent = _capture_assume_role(bed)
    token = bed.token("dev@example.com", DEV)
    issued = bed.call("POST", "/credentials", token, json={"entitlement": "app-read"})
    assert issued.status_code == 201, issued.json
    bound = bed.client.post(
        "/api/v1/credentials",
        json={"entitlement": "net-read"},
        headers={"Authorization": f"Bearer {token}"},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    assert bound.status_code == 201, bound.json
    outside = bed.client.post(
        "/api/v1/credentials",
        json={"entitlement": "net-read"},
        headers={"Authorization": f"Bearer {token}"},
        environ_base={"REMOTE_ADDR": "198.51.100.1"},
    )
    assert outside.status_code == 403 and "203.0.113.0/24" in outside.json["message"]
    assert len(sent) == 2
    app_read, net_read = (json.loads(p["Policy"]) for p in sent)
    assert {t["Key"]: t["Value"] for t in sent[0]["Tags"]}["broker-grant"] == issued.json[
        "grant_id"
    ]
    assert sent[0]["SourceIdentity"] == DEV_SI

    iam = bed.moto.client("iam")
    role_name = bed.roles["read"].rsplit("/", 1)[1]
    stored = iam.get_role_policy(RoleName=role_name, PolicyName="read")["PolicyDocument"]
    assert stored == READ_POLICY
    principal = (
        f"arn:aws:sts::123456789012:assumed-role/{role_name}/{issued.json['role_session_name']}"
    )
    ctx = {"aws:SourceIdentity": DEV_SI, "aws:SourceIp": "198.51.100.1"}
    results = simulate(
        [stored],
        app_read,
        [
            {"action": "s3:GetObject", "resource": "arn:aws:s3:::app-bucket/k", "context": ctx},
            {"action": "s3:GetObject", "resource": "arn:aws:s3:::other-bucket/k", "context": ctx},
            {"action": "s3:ListBucket", "resource": "arn:aws:s3:::app-bucket", "context": ctx},
            {"action": "s3:PutObject", "resource": "arn:aws:s3:::app-bucket/k", "context": ctx},
        ],
        principal,
    )
    assert results == ["Allowed", "ImplicitlyDenied", "ImplicitlyDenied", "ImplicitlyDenied"]
    inside = {"aws:SourceIdentity": DEV_SI, "aws:SourceIp": "203.0.113.7"}
    results = simulate(
        [stored],
        net_read,
        [
            {"action": "s3:GetObject", "resource": "arn:aws:s3:::app-bucket/k", "context": inside},
            {"action": "s3:GetObject", "resource": "arn:aws:s3:::app-bucket/k", "context": ctx},
        ],
        principal,
    )
    assert results == ["Allowed", "ExplicitlyDenied"]


def _all_rows_text(bed: Bed) -> str:
    chunks = []
    with bed.app.app_context():
        engine = get_database().engine
        with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                for row in conn.execute(sa.select(table)):
                    chunks.append(repr(tuple(row)))
    return "\n".join(chunks)


def test_secrets_are_stored_logged_and_audited_nowhere(
    bed: Bed, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    token = bed.token("dev@example.com", DEV)
    body = bed.call("POST", "/credentials", token, json={"entitlement": "app-read"}).json
    secret = body["credentials"]["SecretAccessKey"]
    session_token = body["credentials"]["SessionToken"]
    assert len(secret) >= 20 and len(session_token) >= 20
    haystacks = {"database rows": _all_rows_text(bed), "log records": caplog.text}
    captured = capfd.readouterr()
    haystacks["stdout/stderr"] = captured.out + captured.err
    url = bed.app.config["DATABASE_URL"]
    if url.startswith("sqlite"):
        db_file = Path(url.removeprefix("sqlite:///"))
        raw = b"".join(
            p.read_bytes() for p in db_file.parent.glob(db_file.name + "*") if p.is_file()
        )
        haystacks["database file"] = raw.decode("latin-1")
    assert body["credentials"]["AccessKeyId"] in haystacks["database rows"]  # the search works
    for where, text in haystacks.items():
        assert secret not in text, where
        assert session_token not in text, where


def test_audit_failure_means_no_assume_role_and_503(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    calls: list[str] = []
    with bed.app.app_context():
        issuer = services().issuer
        original = issuer.assume

        def spy(request: Any) -> Any:
            calls.append(request.role_arn)
            return original(request)

        issuer.assume = spy  # type: ignore[method-assign]
        engine = get_database().engine
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE audit_events RENAME TO audit_events_gone"))
    try:
        response = bed.call("POST", "/credentials", token, json={"entitlement": "app-read"})
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE audit_events_gone RENAME TO audit_events"))
    assert response.status_code == 503, response.json
    assert response.json["code"] == "audit_unavailable"
    assert calls == []
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Grant)) == 0
        assert conn.scalar(sa.select(sa.func.count()).select_from(IssuedSession)) == 0
    ok = bed.call("POST", "/credentials", token, json={"entitlement": "app-read"})
    assert ok.status_code == 201 and calls == [bed.roles["read"]]


def test_id_tokens_from_the_configured_issuer_authenticate(bed: Bed) -> None:
    users = [
        {
            "sub": "ivy",
            "email": "ivy@example.com",
            "name": "Ivy",
            "groups": ["developers"],
            "amr": ["pwd", "mfa"],
        },
    ]
    with OidcProvider(users=users) as idp:
        app = create_app(
            {
                **{
                    k: bed.app.config[k] for k in ("DATABASE_URL", "POLICY_DIR", "AWS_ENDPOINT_URL")
                },
                "ENV": "testing",
                "OIDC_ISSUER": idp.issuer,
                "OIDC_CLIENT_ID": "broker",
            }
        )
        client = app.test_client()
        id_token = idp.login("ivy")["id_token"]
        me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {id_token}"})
        assert me.status_code == 200, me.json
        assert me.json["email"] == "ivy@example.com" and me.json["groups"] == ["developers"]
        issued = client.post(
            "/api/v1/credentials",
            json={"entitlement": "app-read"},
            headers={"Authorization": f"Bearer {id_token}"},
        )
        assert issued.status_code == 201, issued.json
        head, payload, signature = id_token.split(".")
        forged = (
            f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
        )
        refused = client.get("/api/v1/me", headers={"Authorization": f"Bearer {forged}"})
        assert refused.status_code == 401 and refused.json["code"] == "invalid_token"
        app.extensions["broker.db"].dispose()
