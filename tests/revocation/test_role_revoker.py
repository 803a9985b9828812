"""RoleRevoker against a real moto IAM server (and botocore's Stubber for IAM failures)."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.stub import Stubber
from moto.iam.models import iam_backends

from broker.errors import ServiceUnavailable
from broker.revocation import (
    POLICY_NAME,
    DenyEntry,
    RevocationPending,
    RoleRevoker,
    policy_size,
)

if TYPE_CHECKING:  # fixtures' types only; conftest is not imported at run time
    from conftest import Clock, Role

MOTO_ACCOUNT = "123456789012"  # moto's default account
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def stored_text(role_name: str, policy_name: str) -> str:
    """The policy text exactly as moto stores it (boto3 would hand it back decoded)."""
    _, text = iam_backends[MOTO_ACCOUNT]["global"].get_role_policy(role_name, policy_name)
    return str(text)


def person(who: str, cutoff: datetime) -> DenyEntry:
    return DenyEntry("person", cutoff, cutoff + HOUR, source_identity=who, ref=who)


def test_max_session_seconds(iam: Any, role: Role, clock: Clock) -> None:
    assert RoleRevoker(iam, clock=clock).max_session_seconds(role.arn) == 3600


def test_other_policies_size_counts_everything_but_ours(iam: Any, role: Role, clock: Clock) -> None:
    revoker = RoleRevoker(iam, clock=clock)
    team = json.loads(role.team_policy_text)
    assert revoker.other_policies_size(role.name) == policy_size(team)
    revoker.apply(role.arn, [person("alice@example.com", T0)])
    assert revoker.other_policies_size(role.name) == policy_size(team)


def test_apply_puts_the_plan_and_leaves_other_policies_alone(
    iam: Any, role: Role, clock: Clock
) -> None:
    assert role.arn.startswith("arn:aws:iam::") and "/broker/targets/" in role.arn
    revoker = RoleRevoker(iam, clock=clock)
    result = revoker.apply(role.arn, [person("alice@example.com", T0 - timedelta(minutes=1))])
    assert result.put is True
    assert result.attempts == 1
    got = iam.get_role_policy(RoleName=role.name, PolicyName=POLICY_NAME)["PolicyDocument"]
    assert got == result.plan.document
    assert len(stored_text(role.name, POLICY_NAME)) == result.plan.size  # sent compact
    assert stored_text(role.name, "TeamPolicy") == role.team_policy_text
    assert sorted(iam.list_role_policies(RoleName=role.name)["PolicyNames"]) == [
        POLICY_NAME,
        "TeamPolicy",
    ]


def test_apply_skips_the_write_when_nothing_changed(iam: Any, role: Role, clock: Clock) -> None:
    revoker = RoleRevoker(iam, clock=clock)
    entries = [person("alice@example.com", T0)]
    assert revoker.apply(role.arn, entries).put is True
    again = revoker.apply(role.arn, entries)
    assert again.put is False
    assert again.plan.document is not None


def test_time_travel_deletes_the_policy_once_everything_expired(
    iam: Any, role: Role, clock: Clock
) -> None:
    revoker = RoleRevoker(iam, clock=clock)
    early = person("alice@example.com", T0)
    late = person("bob@example.com", T0 + timedelta(minutes=30))
    assert revoker.apply(role.arn, [early, late]).put is True

    clock.now = early.drop_after  # alice's sessions are all expired now
    result = revoker.apply(role.arn, [early, late])
    assert result.plan.entries_dropped == (early,)
    doc = iam.get_role_policy(RoleName=role.name, PolicyName=POLICY_NAME)["PolicyDocument"]
    assert "alice@example.com" not in json.dumps(doc)
    assert "bob@example.com" in json.dumps(doc)

    clock.now = late.drop_after + timedelta(seconds=1)
    result = revoker.apply(role.arn, [early, late])
    assert result.plan.document is None
    assert result.put is False
    assert iam.list_role_policies(RoleName=role.name)["PolicyNames"] == ["TeamPolicy"]
    assert stored_text(role.name, "TeamPolicy") == role.team_policy_text
    # Nothing to delete any more: still fine.
    assert revoker.apply(role.arn, []).plan.document is None


def test_budget_is_what_other_policies_leave(iam: Any, role: Role, clock: Clock) -> None:
    # moto does not enforce the 10,240-character total, so the test checks it.
    big = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": f"s3:GetObject{i}", "Resource": "*"} for i in range(120)
        ],
    }
    iam.put_role_policy(RoleName=role.name, PolicyName="Big", PolicyDocument=json.dumps(big))
    revoker = RoleRevoker(iam, clock=clock)
    others = revoker.other_policies_size(role.name)
    assert others > 6000
    entries = [person(f"p{i:03d}@example.com", T0 + timedelta(seconds=i)) for i in range(300)]
    result = revoker.apply(role.arn, entries)
    assert result.put is True
    assert others + result.plan.size <= 10_240
    assert result.plan.compaction


def test_no_room_at_all_is_pending_without_retrying(iam: Any, role: Role, clock: Clock) -> None:
    huge = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::" + "b" * 10_100,
            }
        ],
    }
    iam.put_role_policy(RoleName=role.name, PolicyName="Huge", PolicyDocument=json.dumps(huge))
    sleeps: list[float] = []
    revoker = RoleRevoker(iam, clock=clock, sleep=sleeps.append)
    with pytest.raises(RevocationPending, match="not even a role-wide cutoff fits"):
        revoker.apply(role.arn, [person("alice@example.com", T0)])
    assert sleeps == []
    assert POLICY_NAME not in iam.list_role_policies(RoleName=role.name)["PolicyNames"]


# --- IAM failures, through botocore's Stubber ------------------------------------------------

ROLE_ARN = "arn:aws:iam::111122223333:role/ops/target"
TEAM = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@pytest.fixture
def offline_iam() -> Any:
    return boto3.client(
        "iam",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def expect_reads(stubber: Stubber, policies: dict[str, Any]) -> None:
    stubber.add_response(
        "list_role_policies",
        {"PolicyNames": list(policies), "IsTruncated": False},
        {"RoleName": "target"},
    )
    for name, doc in policies.items():
        stubber.add_response(
            "get_role_policy",
            {"RoleName": "target", "PolicyName": name, "PolicyDocument": json.dumps(doc)},
            {"RoleName": "target", "PolicyName": name},
        )


def test_put_is_retried_with_backoff(offline_iam: Any, clock: Clock) -> None:
    sleeps: list[float] = []
    revoker = RoleRevoker(offline_iam, clock=clock, sleep=sleeps.append, base_delay=0.5)
    with Stubber(offline_iam) as stubber:
        for _ in range(2):
            expect_reads(stubber, {"TeamPolicy": TEAM})
            stubber.add_client_error(
                "put_role_policy", "Throttling", "Rate exceeded", http_status_code=400
            )
        expect_reads(stubber, {"TeamPolicy": TEAM})
        stubber.add_response("put_role_policy", {})
        result = revoker.apply(ROLE_ARN, [person("alice@example.com", T0)])
        stubber.assert_no_pending_responses()
    assert result.put is True
    assert result.attempts == 3
    assert sleeps == [0.5, 1.0]


def test_persistent_failure_raises_revocation_pending(offline_iam: Any, clock: Clock) -> None:
    sleeps: list[float] = []
    revoker = RoleRevoker(offline_iam, clock=clock, sleep=sleeps.append, max_attempts=4)
    with Stubber(offline_iam) as stubber:
        for i in range(4):
            expect_reads(stubber, {"TeamPolicy": TEAM})
            stubber.add_client_error("put_role_policy", "ServiceFailure", f"IAM is down ({i})")
        with pytest.raises(RevocationPending) as raised:
            revoker.apply(ROLE_ARN, [person("alice@example.com", T0)])
        stubber.assert_no_pending_responses()
    err = raised.value
    assert isinstance(err, ServiceUnavailable)
    assert err.code == "revocation_pending"
    assert err.status == 503
    assert "IAM is down (3)" in err.message
    assert "target" in err.message
    assert sleeps == [0.5, 1.0, 2.0]


def test_delete_tolerates_a_policy_already_gone(offline_iam: Any, clock: Clock) -> None:
    ours = {"Version": "2012-10-17", "Statement": []}
    revoker = RoleRevoker(offline_iam, clock=clock)
    with Stubber(offline_iam) as stubber:
        expect_reads(stubber, {POLICY_NAME: ours})
        stubber.add_client_error("delete_role_policy", "NoSuchEntity", "gone", 404)
        result = revoker.apply(ROLE_ARN, [])
        stubber.assert_no_pending_responses()
    assert result.plan.document is None
    assert result.put is False
    assert result.attempts == 1


class UrlEncodedIam:
    """An IAM client double returning PolicyDocument as IAM's raw URL-encoded text."""

    def __init__(self, docs: dict[str, str]) -> None:
        self.docs = docs

    def list_role_policies(self, **kwargs: Any) -> dict[str, Any]:
        return {"PolicyNames": list(self.docs), "IsTruncated": False}

    def get_role_policy(self, *, RoleName: str, PolicyName: str) -> dict[str, Any]:  # noqa: N803
        return {"PolicyDocument": urllib.parse.quote(self.docs[PolicyName])}


def test_other_policies_size_accepts_url_encoded_documents(clock: Clock) -> None:
    text = json.dumps(TEAM, indent=4)
    revoker = RoleRevoker(UrlEncodedIam({"TeamPolicy": text, POLICY_NAME: "{}"}), clock=clock)
    assert revoker.other_policies_size("target") == policy_size(TEAM)
