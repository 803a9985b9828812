"""Fixtures for revocation tests: a real moto IAM server and a role with a foreign policy."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Sid": "TeamAccess", "Effect": "Allow", "Action": "*", "Resource": "*"}],
}
# Written with whitespace on purpose: IAM (and moto) keep the text as sent.
TEAM_POLICY_TEXT = json.dumps(ALLOW_ALL, indent=2)
TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
        }
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto server on a free local port, for the module's tests."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def iam(moto_endpoint: str) -> Any:
    """A real boto3 IAM client pointed at the moto server."""
    return boto3.client(
        "iam",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclass(frozen=True)
class Role:
    """A target role: its name, ARN, and the foreign inline policy it carries."""

    name: str
    arn: str
    team_policy_text: str


@pytest.fixture
def role(iam: Any) -> Role:
    """A fresh role under a path, 1 h max session, with the inline policy "TeamPolicy"."""
    name = f"target-{uuid.uuid4().hex[:8]}"
    created = iam.create_role(
        RoleName=name,
        Path="/broker/targets/",
        AssumeRolePolicyDocument=json.dumps(TRUST),
        MaxSessionDuration=3600,
    )
    iam.put_role_policy(RoleName=name, PolicyName="TeamPolicy", PolicyDocument=TEAM_POLICY_TEXT)
    return Role(name=name, arn=created["Role"]["Arn"], team_policy_text=TEAM_POLICY_TEXT)


class Clock:
    """A settable clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A clock standing at 2026-11-26 10:00:00 UTC."""
    return Clock(datetime(2026, 11, 26, 10, 0, tzinfo=UTC))
