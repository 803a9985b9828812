"""A real AWS endpoint for tests: moto server on a free loopback port, and IAM role helpers.

Use as ``from aws import MotoServer, create_role``. moto keeps its state per process, so two
servers in one test run share accounts; give roles unique names (or call ``reset()``).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import boto3
import requests
from botocore.config import Config
from moto.server import ThreadedMotoServer

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
DUMMY_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


class MotoServer:
    """moto server over HTTP on 127.0.0.1 and a free port; a context manager."""

    def __init__(self) -> None:
        self._server: Any = None
        self._session: boto3.session.Session | None = None
        self.endpoint_url = ""

    def start(self) -> MotoServer:
        """Start serving; port 0 lets the OS pick a free port, so there is no race."""
        # werkzeug logs every request line to stderr; keep test output readable.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        """Forget every resource moto holds (all accounts, all services)."""
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def client(
        self,
        service: str,
        *,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        region: str = REGION,
    ) -> Any:
        """A boto3 client for `service` against this server (dummy credentials by default)."""
        # One boto3 session per server: loading service models is the slow part of a client.
        if self._session is None:
            self._session = boto3.session.Session()
        return self._session.client(  # type: ignore[call-overload]
            service,
            region_name=region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key_id or DUMMY_CREDENTIALS["aws_access_key_id"],
            aws_secret_access_key=secret_access_key or DUMMY_CREDENTIALS["aws_secret_access_key"],
            aws_session_token=session_token,
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def trust_policy(account: str = ACCOUNT_ID) -> dict[str, Any]:
    """A trust policy letting the account root assume, set source identity and tag sessions."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
            }
        ],
    }


def create_role(
    iam: Any,
    name: str,
    *,
    max_session_seconds: int = 3600,
    account: str = ACCOUNT_ID,
    path: str = "/",
    policies: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Create an IAM role the broker may assume, with optional inline policies; return its ARN."""
    role = iam.create_role(
        RoleName=name,
        Path=path,
        AssumeRolePolicyDocument=json.dumps(trust_policy(account)),
        MaxSessionDuration=max_session_seconds,
    )["Role"]
    for policy_name, document in (policies or {}).items():
        iam.put_role_policy(
            RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document)
        )
    return str(role["Arn"])


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released), for connection-refused tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
