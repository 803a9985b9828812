"""Each RoleRevoker attempt is one IAM request on the wire: botocore adds no retries of its own."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from faultproxy import FaultProxy

from broker.aws import make_client
from broker.revocation import RevocationPending, RoleRevoker

ROLE_ARN = "arn:aws:iam::123456789012:role/wire-count"


def test_an_iam_internal_error_costs_one_request_per_attempt(moto_endpoint: str) -> None:
    with FaultProxy(moto_endpoint, ["500"] * 3) as proxy:
        iam = make_client(
            "iam",
            region="us-east-1",
            endpoint_url=proxy.endpoint_url,
            timeout=5,
            access_key_id="testing",
            secret_access_key="testing",
        )
        sleeps: list[float] = []
        revoker = RoleRevoker(
            iam, clock=lambda: datetime.now(UTC), sleep=sleeps.append, max_attempts=3
        )
        with pytest.raises(RevocationPending):
            revoker.apply(ROLE_ARN, [])
    assert proxy.calls == ["ListRolePolicies"] * 3
    assert len(sleeps) == 2
