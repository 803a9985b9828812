"""The IAM simulator harness evaluates role policy + session policy + revocation denies."""

from __future__ import annotations

from typing import Any

import pytest
from iamsim import IamSimError, require_node_modules, simulate, simulate_raw

try:
    require_node_modules()
except IamSimError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

PRINCIPAL = "arn:aws:sts::111122223333:assumed-role/broker-s3-read/dana-g123"
OBJECT = "arn:aws:s3:::reports-bucket/2026/q4.csv"
OTHER_OBJECT = "arn:aws:s3:::other-bucket/secret.txt"

ROLE_POLICY: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "*"},
    ],
}


def _session_policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


READ_REPORTS = {
    "Effect": "Allow",
    "Action": "s3:GetObject",
    "Resource": "arn:aws:s3:::reports-bucket/*",
}


def _get(resource: str = OBJECT, **context: str) -> dict[str, Any]:
    return {"action": "s3:GetObject", "resource": resource, "context": context}


def test_allowed_by_role_policy_and_session_policy() -> None:
    results = simulate([ROLE_POLICY], _session_policy(READ_REPORTS), [_get()], PRINCIPAL)
    assert results == ["Allowed"]


def test_role_policy_alone_allows_without_a_session_policy() -> None:
    put = {"action": "s3:PutObject", "resource": OBJECT, "context": {}}
    assert simulate([ROLE_POLICY], None, [_get(), put], PRINCIPAL) == ["Allowed", "Allowed"]


def test_denied_when_session_policy_does_not_allow() -> None:
    requests = [
        _get(OTHER_OBJECT),  # role allows, session policy does not
        {"action": "s3:PutObject", "resource": OBJECT, "context": {}},
    ]
    results = simulate([ROLE_POLICY], _session_policy(READ_REPORTS), requests, PRINCIPAL)
    assert results == ["ImplicitlyDenied", "ImplicitlyDenied"]


def test_session_policy_cannot_grant_beyond_the_role() -> None:
    role = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"}],
    }
    assert simulate([role], _session_policy(READ_REPORTS), [_get()], PRINCIPAL) == [
        "ImplicitlyDenied"
    ]


def test_explicit_deny_in_session_policy_wins() -> None:
    deny = {"Effect": "Deny", "Action": "s3:GetObject", "Resource": OBJECT}
    results = simulate([ROLE_POLICY], _session_policy(READ_REPORTS, deny), [_get()], PRINCIPAL)
    assert results == ["ExplicitlyDenied"]


def test_revocation_deny_by_source_identity_and_token_issue_time() -> None:
    # What the broker attaches to the role to revoke everything dana got before the cutoff.
    revocation = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "BrokerRevokeDana",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {
                    "StringEquals": {"aws:SourceIdentity": "dana@contractor.example"},
                    "DateLessThan": {"aws:TokenIssueTime": "2026-11-26T12:00:00Z"},
                },
            }
        ],
    }
    ctx = {"aws:SourceIdentity": "dana@contractor.example", "aws:SourceIp": "203.0.113.7"}
    requests = [
        _get(**ctx, **{"aws:TokenIssueTime": "2026-11-26T10:00:00Z"}),  # before the cutoff
        _get(**ctx, **{"aws:TokenIssueTime": "2026-11-26T12:30:00Z"}),  # after it
        _get(
            **{
                "aws:SourceIdentity": "alex@corp.example",
                "aws:TokenIssueTime": "2026-11-26T10:00:00Z",
            }
        ),  # someone else
    ]
    results = simulate(
        [ROLE_POLICY, revocation], _session_policy(READ_REPORTS), requests, PRINCIPAL
    )
    assert results == ["ExplicitlyDenied", "Allowed", "Allowed"]


def test_source_ip_condition_is_respected() -> None:
    from_office = {
        **READ_REPORTS,
        "Condition": {"IpAddress": {"aws:SourceIp": ["203.0.113.0/24", "2001:db8::/32"]}},
    }
    requests = [
        _get(**{"aws:SourceIp": "203.0.113.7"}),
        _get(**{"aws:SourceIp": "198.51.100.9"}),
        _get(),  # no source IP known: the condition cannot match
    ]
    results = simulate([ROLE_POLICY], _session_policy(from_office), requests, PRINCIPAL)
    assert results == ["Allowed", "ImplicitlyDenied", "ImplicitlyDenied"]


def test_principal_tag_condition() -> None:
    tagged = {
        **READ_REPORTS,
        "Condition": {"StringEquals": {"aws:PrincipalTag/broker-grant": "g123"}},
    }
    requests = [
        _get(**{"aws:PrincipalTag/broker-grant": "g123"}),
        _get(**{"aws:PrincipalTag/broker-grant": "g999"}),
    ]
    assert simulate([ROLE_POLICY], _session_policy(tagged), requests, PRINCIPAL) == [
        "Allowed",
        "ImplicitlyDenied",
    ]


def test_raw_result_explains_and_reports_no_ignored_context_keys() -> None:
    [result] = simulate_raw(
        [ROLE_POLICY],
        _session_policy(READ_REPORTS),
        [_get(**{"aws:SourceIp": "203.0.113.7"})],
        PRINCIPAL,
    )
    assert result["result"] == "Allowed"
    assert result["ignoredContextKeys"] == []
    analysis = result["raw"]["result"]["analysis"]
    assert analysis["sessionAnalysis"]["result"] == "Allowed"
    assert analysis["identityAnalysis"]["result"] == "Allowed"


def test_invalid_input_raises_instead_of_denying() -> None:
    bad_policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Maybe", "Action": "s3:*"}]}
    with pytest.raises(IamSimError):
        simulate([bad_policy], None, [_get()], PRINCIPAL)
    with pytest.raises(IamSimError):
        simulate(
            [ROLE_POLICY], None, [{"action": "s3:NoSuchAction", "resource": OBJECT}], PRINCIPAL
        )
