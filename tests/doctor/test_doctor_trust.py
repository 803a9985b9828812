"""Reading trust policies: who the broker is, and which statements let it in."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest

from broker.doctor.trust import broker_principal, check_trust, parse_document
from broker.iam_setup import TRUST_ACTIONS, trust_policy

USER = "arn:aws:iam::111122223333:user/ops/broker"
SESSION = "arn:aws:sts::111122223333:assumed-role/broker/i-0abc"
ROLE = "arn:aws:iam::111122223333:role/services/broker"


def trust(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(principal: Any, action: Any, **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": principal, "Action": action, **extra}


def test_principals_are_read_from_the_caller_arn() -> None:
    user = broker_principal(USER)
    assert (user.kind, user.account, user.principal_arn, user.chaining) == (
        "user",
        "111122223333",
        USER,
        False,
    )
    session = broker_principal(SESSION)
    assert session.kind == "role" and session.chaining and session.role_name == "broker"
    assert session.principal_arn == "arn:aws:iam::111122223333:role/broker"
    assert broker_principal(SESSION, role_arn=ROLE).principal_arn == ROLE
    assert broker_principal("arn:aws:iam::111122223333:root").kind == "root"
    china = broker_principal("arn:aws-cn:iam::111122223333:user/b")
    assert china.matches("arn:aws-cn:iam::111122223333:root") == "account"


def test_a_role_session_matches_its_role_whatever_the_path() -> None:
    session = broker_principal(SESSION)
    assert session.matches(ROLE) == "exact"
    assert session.matches("arn:aws:iam::111122223333:role/broker") == "exact"
    assert session.matches(SESSION) == "exact"
    assert session.matches("arn:aws:iam::111122223333:role/broker-other") is None
    assert session.matches("arn:aws:iam::999999999999:role/broker") is None
    assert session.matches("111122223333") == "account"
    assert session.matches("*") == "any"


@pytest.mark.parametrize("principal", [USER, SESSION])
def test_the_snippet_iam_policies_prints_passes(principal: str) -> None:
    me = broker_principal(principal)
    document = trust_policy(me.principal_arn)
    verdicts = [check_trust(document, me, action) for action in TRUST_ACTIONS]
    assert [(v.status, v.via) for v in verdicts] == [("ok", "exact")] * 3


def test_each_missing_action_fails_alone() -> None:
    me = broker_principal(USER)
    document = trust(
        allow({"AWS": USER}, "sts:AssumeRole"), allow({"AWS": [USER]}, ["sts:TagSession"])
    )
    results = {a: check_trust(document, me, a).status for a in TRUST_ACTIONS}
    assert results == {
        "sts:AssumeRole": "ok",
        "sts:SetSourceIdentity": "fail",
        "sts:TagSession": "ok",
    }


def test_wildcard_actions_and_not_action_are_understood() -> None:
    me = broker_principal(USER)
    assert check_trust(trust(allow({"AWS": USER}, "sts:*")), me, "sts:TagSession").status == "ok"
    assert check_trust(trust(allow({"AWS": USER}, "STS:Tag*")), me, "sts:TagSession").status == "ok"
    not_tags = trust({"Effect": "Allow", "Principal": {"AWS": USER}, "NotAction": "sts:Tag*"})
    assert check_trust(not_tags, me, "sts:AssumeRole").status == "ok"
    assert check_trust(not_tags, me, "sts:TagSession").status == "fail"


def test_the_account_root_allows_but_says_the_identity_policy_must_too() -> None:
    me = broker_principal(USER)
    verdict = check_trust(
        trust(allow({"AWS": "arn:aws:iam::111122223333:root"}, "sts:AssumeRole")),
        me,
        "sts:AssumeRole",
    )
    assert (verdict.status, verdict.via) == ("ok", "account")
    assert "identity policy must allow it too" in verdict.reason


def test_every_principal_is_a_warning_with_or_without_conditions() -> None:
    me = broker_principal(USER)
    anyone = check_trust(trust(allow("*", "sts:AssumeRole")), me, "sts:AssumeRole")
    assert anyone.status == "warn" and "every AWS principal" in anyone.reason
    condition = {"StringEquals": {"aws:PrincipalArn": USER}}
    guarded = check_trust(
        trust(allow({"AWS": "*"}, "sts:AssumeRole", Condition=condition)), me, "sts:AssumeRole"
    )
    assert guarded.status == "warn" and "aws:PrincipalArn" in guarded.reason


def test_conditions_the_broker_always_meets_are_ok_others_are_warnings() -> None:
    me = broker_principal(USER)
    for condition in (
        {"StringLike": {"sts:SourceIdentity": "*"}},
        {"StringLike": {"sts:SourceIdentity": ["*"]}},
        {"Null": {"sts:SourceIdentity": "false"}},
    ):
        document = trust(allow({"AWS": USER}, "sts:AssumeRole", Condition=condition))
        assert check_trust(document, me, "sts:AssumeRole").status == "ok", condition
    mfa = trust(
        allow(
            {"AWS": USER},
            "sts:AssumeRole",
            Condition={"Bool": {"aws:MultiFactorAuthPresent": "true"}},
        )
    )
    verdict = check_trust(mfa, me, "sts:AssumeRole")
    assert verdict.status == "warn" and "aws:MultiFactorAuthPresent" in verdict.reason


def test_a_deny_wins() -> None:
    me = broker_principal(USER)
    deny = {"Sid": "NoBroker", "Effect": "Deny", "Principal": {"AWS": USER}, "Action": "sts:*"}
    document = trust(allow({"AWS": USER}, "sts:AssumeRole"), deny)
    verdict = check_trust(document, me, "sts:AssumeRole")
    assert (verdict.status, verdict.reason) == ("fail", "NoBroker denies it")
    conditional = dict(deny, Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})
    verdict = check_trust(
        trust(allow({"AWS": USER}, "sts:AssumeRole"), conditional), me, "sts:AssumeRole"
    )
    assert verdict.status == "warn"


def test_service_and_federated_principals_are_not_the_broker() -> None:
    me = broker_principal(USER)
    document = trust(
        allow({"Service": "ec2.amazonaws.com"}, "sts:AssumeRole"),
        allow({"Federated": "arn:aws:iam::111122223333:oidc-provider/x"}, "sts:AssumeRole"),
    )
    assert check_trust(document, me, "sts:AssumeRole").status == "fail"


def test_documents_are_read_as_iam_returns_them() -> None:
    document = trust_policy(USER)
    text = json.dumps(document)
    assert parse_document(document) == document
    assert parse_document(text) == document
    assert parse_document(urllib.parse.quote(text)) == document
    single = {"Version": "2012-10-17", "Statement": allow({"AWS": USER}, "sts:AssumeRole")}
    assert check_trust(single, broker_principal(USER), "sts:AssumeRole").status == "ok"
