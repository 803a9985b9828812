from __future__ import annotations

import json
from typing import Any

from broker.policy import check_session_policy, policy_json_compact


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


READ = {"Effect": "Allow", "Action": ["s3:GetObject", "s3:List*"], "Resource": "*"}


def test_valid_read_only_policy_has_no_errors_or_warnings() -> None:
    assert check_session_policy(doc(READ)) == ([], [])


def test_single_statement_mapping_is_accepted() -> None:
    errors, _ = check_session_policy({"Version": "2008-10-17", "Statement": READ})
    assert errors == []


def test_wrong_version_is_an_error() -> None:
    errors, _ = check_session_policy({"Version": "2020-01-01", "Statement": [READ]})
    assert errors == [
        "Version: must be '2012-10-17' (or the legacy '2008-10-17'), not '2020-01-01'"
    ]


def test_empty_statement_list_is_an_error() -> None:
    errors, _ = check_session_policy({"Version": "2012-10-17", "Statement": []})
    assert any(e.startswith("Statement:") for e in errors)


def test_action_and_not_action_together_is_an_error() -> None:
    errors, _ = check_session_policy(
        doc({"Effect": "Allow", "Action": "s3:GetObject", "NotAction": "iam:*", "Resource": "*"})
    )
    assert errors == ["Statement[0]: statement has both Action and NotAction; give exactly one"]


def test_missing_resource_is_an_error() -> None:
    errors, _ = check_session_policy(doc({"Effect": "Allow", "Action": "s3:GetObject"}))
    assert errors == [
        "Statement[0]: statement needs one of Resource and NotResource; give exactly one"
    ]


def test_bad_effect_action_resource_and_principal_are_each_reported() -> None:
    errors, _ = check_session_policy(
        doc(
            {
                "Effect": "Permit",
                "Action": ["s3GetObject"],
                "Resource": "bucket",
                "Principal": "*",
            }
        )
    )
    assert "Statement[0].Effect: must be Allow or Deny, not 'Permit'" in errors
    assert any(
        e.startswith("Statement[0].Action[0]: 's3GetObject' is not an action") for e in errors
    )
    assert any(e.startswith("Statement[0].Resource: 'bucket' is not a resource") for e in errors)
    assert "Statement[0].Principal: session policies cannot name a Principal" in errors


def test_malformed_condition_is_an_error() -> None:
    errors, _ = check_session_policy(doc({**READ, "Condition": {"StringEquals": ["aws:SourceIp"]}}))
    assert errors == [
        "Statement[0].Condition.StringEquals: StringEquals must map condition keys to values"
    ]


def test_policy_over_2048_characters_is_refused_with_its_size() -> None:
    resources = [f"arn:aws:s3:::bucket-number-{n:04d}/*" for n in range(70)]
    policy = doc({"Effect": "Allow", "Action": "s3:GetObject", "Resource": resources})
    size = len(policy_json_compact(policy))
    assert size > 2048
    errors, _ = check_session_policy(policy)
    assert len(errors) == 1
    assert f"session policy is {size} characters" in errors[0]


def test_compact_json_has_no_whitespace_and_round_trips() -> None:
    policy = doc(READ)
    text = policy_json_compact(policy)
    assert " " not in text
    assert json.loads(text) == policy


def test_escalation_patterns_warn() -> None:
    _, warnings = check_session_policy(
        doc(
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            {"Effect": "Allow", "Action": ["iam:*", "sts:*"], "Resource": "*"},
            {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
        )
    )
    text = "\n".join(warnings)
    assert "Statement[0].Action: Action '*' allows every action" in text
    assert "'iam:*' lets the session change IAM" in text
    assert "'sts:*' lets the session assume other roles" in text
    assert "Statement[2].NotAction: Allow with NotAction" in text


def test_write_actions_on_every_resource_warn_but_reads_do_not() -> None:
    _, warnings = check_session_policy(
        doc({"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": "*"})
    )
    assert len(warnings) == 1
    assert "Resource '*' with actions that can change things (s3:PutObject)" in warnings[0]
    assert check_session_policy(doc(READ))[1] == []


def test_deny_statements_never_warn() -> None:
    errors, warnings = check_session_policy(
        doc(READ, {"Effect": "Deny", "Action": "*", "Resource": "*"})
    )
    assert (errors, warnings) == ([], [])
