"""Building boto3 clients the broker's way, and reading role ARNs.

Clients are made with botocore's own retries switched off, so one call is one request on the
wire: the services decide what is worth retrying (STS throttling, IAM's eventual consistency).
botocore's ``max_attempts`` counts *retries* (``max_attempts: 1`` sends up to two requests);
``total_max_attempts`` counts requests, and an explicit value also overrides AWS_MAX_ATTEMPTS
and ``max_attempts`` in ~/.aws/config.
Nothing here runs at import time; callers build clients from settings and pass them in.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import boto3
from botocore.config import Config

# Partitions: aws, aws-cn, aws-us-gov, aws-iso, aws-iso-b, aws-iso-e, aws-iso-f, aws-eusc.
_PARTITION = r"aws(?:-[a-z]+(?:-[a-z])?)?"
# A role path is "/" or "/a/b/"; name 1-64 of [\w+=,.@-]; whole ARN at most 2,048 characters.
_ROLE_ARN_RE = re.compile(
    rf"^arn:{_PARTITION}:iam::(?P<account>\d{{12}}):role"
    r"(?P<path>/(?:[\x21-\x7e]{1,510}/)?)(?P<name>[\w+=,.@-]{1,64})$",
    re.ASCII,
)
_POLICY_ARN_RE = re.compile(
    rf"^arn:{_PARTITION}:iam::(?:\d{{12}}|aws):policy"
    r"/(?:[\x21-\x7e]{1,510}/)?[\w+=,.@-]{1,128}$",
    re.ASCII,
)


class RoleArn(NamedTuple):
    """The parts of an IAM role ARN that the broker uses."""

    account: str
    path: str
    name: str


def parse_role_arn(arn: str) -> RoleArn:
    """Split `arn:aws:iam::ACCOUNT:role/PATH/NAME`; raise ValueError saying what is wrong."""
    match = _ROLE_ARN_RE.match(arn) if len(arn) <= 2048 else None
    if match is None:
        raise ValueError(
            f"{arn!r} is not an IAM role ARN; expected arn:aws:iam::<12-digit account>:role/<name> "
            "(optionally with a path, role/<path>/<name>)"
        )
    return RoleArn(match["account"], match["path"], match["name"])


def is_policy_arn(arn: str) -> bool:
    """Whether `arn` looks like an IAM managed policy ARN (customer or AWS managed)."""
    return len(arn) <= 2048 and _POLICY_ARN_RE.match(arn) is not None


def client_config(timeout: float) -> Config:
    """botocore settings for broker clients: one request per call, bounded connect and read time."""
    return Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=timeout,
        read_timeout=timeout,
    )


def make_client(
    service: str,
    *,
    region: str,
    endpoint_url: str | None,
    timeout: float,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    session: boto3.session.Session | None = None,
) -> Any:
    """A boto3 client for `service` with botocore retries off (the caller decides on retries).

    Credentials come from the usual boto3 chain unless given explicitly; `endpoint_url` points
    at a regional STS endpoint, a VPC endpoint, or an emulator such as moto server.
    """
    boto_session = session or boto3.session.Session()
    return boto_session.client(
        service,  # type: ignore[call-overload]
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        config=client_config(timeout),
    )
