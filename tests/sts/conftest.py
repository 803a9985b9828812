"""A moto server shared by the STS tests, and IAM/STS clients pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aws import MotoServer

from broker.aws import make_client


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server on a free loopback port for the whole run."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def boto_session() -> boto3.session.Session:
    """One boto3 session for the run, so clients do not reload service models every test."""
    return boto3.session.Session()


@pytest.fixture
def iam(moto_server: MotoServer) -> Any:
    """An IAM client against moto."""
    return moto_server.client("iam")


@pytest.fixture
def sts(moto_server: MotoServer, boto_session: boto3.session.Session) -> Any:
    """An STS client against moto, built the broker's way (botocore retries off)."""
    return make_client(
        "sts",
        region="us-east-1",
        endpoint_url=moto_server.endpoint_url,
        timeout=5,
        access_key_id="testing",
        secret_access_key="testing",
        session=boto_session,
    )
