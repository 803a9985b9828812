"""An API test bed: real moto roles, a policy written for them, tokens for demo people."""

from __future__ import annotations

import textwrap
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from broker.auth import tokens
from broker.db import get_database
from broker.models import utcnow
from broker.policy import Identity
from broker.policy_store import get_policy

ACCOUNT = "123456789012"
READ_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}
    ],
}
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


@dataclass
class Bed:
    """Everything an API test needs."""

    app: Flask
    client: FlaskClient
    moto: Any
    roles: dict[str, str]
    policy_dir: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def token(
        self,
        email: str,
        groups: tuple[str, ...] = (),
        amr: tuple[str, ...] = ("pwd", "mfa"),
        ttl: timedelta = timedelta(hours=1),
    ) -> str:
        """Mint (once) a broker token for a person."""
        key = f"{email}|{','.join(groups)}|{','.join(amr)}"
        if key not in self.tokens:
            identity = Identity(
                issuer="urn:test", subject=email, email=email, groups=frozenset(groups), amr=amr
            )
            with self.app.app_context():
                person = get_policy().evaluator.resolve(identity)
                with get_database().session() as session:
                    plaintext, _ = tokens.mint_for_person(
                        session, person, name="test", kind="admin", ttl=ttl, now=utcnow()
                    )
            self.tokens[key] = plaintext
        return self.tokens[key]

    def call(self, method: str, path: str, token: str | None, **kwargs: Any) -> Any:
        """Call the API with a bearer token."""
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.open(f"/api/v1{path}", method=method, headers=headers, **kwargs)


def write_policy(directory: Path, roles: dict[str, str], contractor_end: datetime) -> None:
    """The test company's policy, pointing at this test's moto roles."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.yaml").write_text(
        textwrap.dedent(
            f"""\
            version: 1
            people:
              - match: {{emails: ["*@contractor.example"]}}
                kind: contractor
              - match: {{emails: ["cora@contractor.example"]}}
                valid_until: "{contractor_end.strftime("%Y-%m-%dT%H:%M:%SZ")}"
                sponsor: lead@example.com
            entitlements:
              - id: app-read
                description: Read the app bucket
                role_arn: {roles["read"]}
                allow: {{groups: [developers]}}
                max_duration: 2h
                max_grant: 4h
                session_policy:
                  Version: "2012-10-17"
                  Statement:
                    - Effect: Allow
                      Action: ["s3:GetObject"]
                      Resource: "arn:aws:s3:::app-bucket/*"
              - id: app-admin
                description: Administer the app account
                role_arn: {roles["admin"]}
                allow: {{groups: [sre]}}
                max_duration: 1h
                require_reason: true
                approval: {{approvers: {{groups: [security]}}}}
              - id: net-read
                role_arn: {roles["read"]}
                allow: {{groups: [developers]}}
                max_duration: 1h
                network: {{source_ip: [203.0.113.0/24]}}
                session_policy:
                  Version: "2012-10-17"
                  Statement:
                    - Effect: Allow
                      Action: ["s3:GetObject"]
                      Resource: "arn:aws:s3:::app-bucket/*"
              - id: prod-read
                role_arn: {roles["read"]}
                allow: {{groups: [developers]}}
                require_mfa: true
                max_duration: 1h
            deny:
              - match: {{kinds: [contractor]}}
                entitlements: ["prod-*"]
                reason: Contractors never get production access
            admins: {{groups: [security-admins]}}
            auditors: {{groups: [compliance]}}
            """
        )
    )


def create_bed_roles(moto_server: Any) -> dict[str, str]:
    """The test company's two roles in moto, under names unique to this test."""
    from aws import create_role

    suffix = uuid.uuid4().hex[:8]
    iam = moto_server.client("iam")
    return {
        "read": create_role(
            iam, f"read-{suffix}", max_session_seconds=3600, policies={"read": READ_POLICY}
        ),
        "admin": create_role(
            iam, f"admin-{suffix}", max_session_seconds=7200, policies={"admin": ADMIN_POLICY}
        ),
    }


def bed_setup(
    database_url: str, moto_server: Any, tmp_path: Path
) -> tuple[dict[str, str], Path, dict[str, Any]]:
    """Roles in moto, the policy written for them, and the app configuration that uses both."""
    roles = create_bed_roles(moto_server)
    policy_dir = tmp_path / "policies"
    write_policy(policy_dir, roles, utcnow() + timedelta(minutes=40))
    config: dict[str, Any] = {
        "ENV": "testing",
        "TESTING": True,
        "DATABASE_URL": database_url,
        "POLICY_DIR": str(policy_dir),
        "AWS_ENDPOINT_URL": moto_server.endpoint_url,
        "AWS_REGION": "us-east-1",
    }
    return roles, policy_dir, config
