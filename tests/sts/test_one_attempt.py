"""One broker attempt is one AssumeRole on the wire, and a lost answer is never retried.

A proxy between the broker's STS client and moto counts the requests that reach it and answers
some of them with AWS's errors, drops the connection after moto acted, or holds the answer past
the client's read timeout.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aws import MotoServer, create_role
from faultproxy import Fault, FaultProxy

from broker.aws import client_config, make_client
from broker.sts import (
    AssumeRequest,
    AwsError,
    AwsOutcomeUnknown,
    AwsThrottled,
    StsIssuer,
    role_session_name,
)

READ_TIMEOUT = 0.5


def no_sleep(seconds: float) -> None:
    """Backoff without waiting, so the test counts attempts, not seconds."""


def fail_sleep(seconds: float) -> None:
    raise AssertionError(f"slept {seconds}s: a lost answer must never be retried")


@pytest.fixture
def role_arn(iam: Any, request: pytest.FixtureRequest) -> str:
    return create_role(iam, re.sub(r"[^\w+=,.@-]", "-", request.node.name)[:64])


@pytest.fixture
def proxied(
    moto_server: MotoServer, boto_session: boto3.session.Session
) -> Iterator[tuple[FaultProxy, Any]]:
    """A proxy in front of moto (forwarding until told otherwise) and a broker STS client."""
    with FaultProxy(moto_server.endpoint_url, hold_seconds=READ_TIMEOUT * 4) as proxy:
        client = make_client(
            "sts",
            region="us-east-1",
            endpoint_url=proxy.endpoint_url,
            timeout=READ_TIMEOUT,
            access_key_id="testing",
            secret_access_key="testing",
            session=boto_session,
        )
        yield proxy, client


def request_for(role_arn: str) -> AssumeRequest:
    return AssumeRequest(
        role_arn=role_arn,
        role_session_name=role_session_name("g-wire"),
        source_identity="alice@example.com",
        duration_seconds=900,
    )


def test_client_config_sends_each_call_once() -> None:
    assert client_config(3).retries == {"total_max_attempts": 1, "mode": "standard"}


def test_a_good_answer_is_one_wire_call(proxied: tuple[FaultProxy, Any], role_arn: str) -> None:
    proxy, client = proxied
    StsIssuer(client, sleep=fail_sleep).assume(request_for(role_arn))
    assert proxy.calls == ["AssumeRole"]


@pytest.mark.parametrize(
    ("fault", "error"), [("500", AwsError), ("throttle", AwsThrottled)], ids=["500", "throttle"]
)
def test_each_attempt_on_an_aws_error_is_one_wire_call(
    proxied: tuple[FaultProxy, Any], role_arn: str, fault: Fault, error: type[Exception]
) -> None:
    proxy, client = proxied
    proxy.queue(fault, fault, fault)
    with pytest.raises(error):
        StsIssuer(client, sleep=no_sleep, max_attempts=3).assume(request_for(role_arn))
    assert proxy.calls == ["AssumeRole"] * 3
    assert proxy.upstream_answers == []  # moto (AWS) never saw one: nothing was issued


@pytest.mark.parametrize("fault", ["500", "throttle"])
def test_an_aws_error_then_success_issues_once(
    proxied: tuple[FaultProxy, Any], role_arn: str, fault: Fault
) -> None:
    proxy, client = proxied
    proxy.queue(fault)
    slept: list[float] = []
    issued = StsIssuer(client, sleep=slept.append, max_attempts=3).assume(request_for(role_arn))
    assert issued.access_key_id
    assert proxy.calls == ["AssumeRole"] * 2
    assert proxy.upstream_answers == [200]
    assert len(slept) == 1


@pytest.mark.parametrize("fault", ["drop", "timeout"])
def test_a_lost_answer_is_never_retried(
    proxied: tuple[FaultProxy, Any], role_arn: str, fault: Fault
) -> None:
    proxy, client = proxied
    proxy.queue(fault)
    req = request_for(role_arn)
    with pytest.raises(AwsOutcomeUnknown) as info:
        StsIssuer(client, sleep=fail_sleep, max_attempts=4).assume(req)
    assert proxy.calls == ["AssumeRole"]
    assert proxy.upstream_answers == [200]  # AWS did make the session the broker never saw
    err = info.value
    assert (err.role_arn, err.role_session_name) == (role_arn, req.role_session_name)
    assert err.code == "aws_outcome_unknown" and err.status == 503
    assert req.role_session_name in err.message and "not repeated" in err.message


def test_a_gateway_error_is_not_taken_for_an_aws_answer(
    proxied: tuple[FaultProxy, Any], role_arn: str
) -> None:
    proxy, client = proxied
    proxy.queue("gateway")
    with pytest.raises(AwsOutcomeUnknown, match="HTTP 504 without an AWS error"):
        StsIssuer(client, sleep=fail_sleep, max_attempts=4).assume(request_for(role_arn))
    assert proxy.calls == ["AssumeRole"]
