"""Detection rules in the policy directory: schema-checked with path:line errors, and matched
by action, resource, region, request parameters, network, person and grant state."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.activity.attribution import Attribution, PersonFacts, SessionFacts
from broker.activity.cloudtrail import action_of
from broker.activity.detections import DetectionEngine
from broker.policy import PolicyLoadError, load_policy_dir, policy_json_schema

BASE = """\
version: 1
people: []
deny: []
entitlements:
  - id: sandbox
    role_arn: arn:aws:iam::111122223333:role/sandbox
    allow: {everyone: true}
    region: eu-west-1
    network: {source_ip: [203.0.113.0/24]}
"""


def _load(tmp_path: Path, rules: str, **extra: str) -> Any:
    (tmp_path / "policy.yaml").write_text(BASE)
    (tmp_path / "detections.yaml").write_text(
        "version: 1\ndetections:\n" + textwrap.indent(textwrap.dedent(rules), "  ")
    )
    for name, text in extra.items():
        (tmp_path / name).write_text(text)
    return load_policy_dir(tmp_path)


def test_rule_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as caught:
        _load(
            tmp_path,
            """\
            - id: ok-rule
              match: {actions: ["ec2:RunInstances"]}
            - id: Bad Id
              match: {actions: ["RunInstances"]}
              response: revoke
            - id: nothing
              match: {who: {kinds: [contractor]}}
            """,
        )
    errors = [str(i) for i in caught.value.errors]
    detections = tmp_path / "detections.yaml"
    assert any(
        e.startswith(f"{detections}:5: detections[1].id: 'Bad Id' is not a valid") for e in errors
    )
    assert any(
        e.startswith(f"{detections}:6: detections[1].match.actions[0]: 'RunInstances'")
        for e in errors
    )
    assert any(
        e.startswith(f"{detections}:7: detections[1].response: Input should be") for e in errors
    )
    assert any(
        f"{detections}:9: detections[2].match: a detection must look at the record" in e
        for e in errors
    )


def test_rule_ids_are_unique_across_files(tmp_path: Path) -> None:
    more = "version: 1\ndetections:\n  - id: ok-rule\n    match: {regions: [x]}\n"
    rules = '- id: ok-rule\n  match: {actions: ["ec2:RunInstances"]}\n'
    with pytest.raises(PolicyLoadError) as caught:
        _load(tmp_path, rules, **{"more.yaml": more})
    assert [str(i) for i in caught.value.errors] == [
        f"{tmp_path / 'more.yaml'}:3: duplicate detection rule id 'ok-rule': also defined at "
        "detections.yaml:3; ids must be unique across all policy files"
    ]


def test_published_schema_describes_detections() -> None:
    schema = policy_json_schema()
    assert "detections" in schema["properties"]
    assert "DetectionRule" in schema["$defs"] and "RecordMatch" in schema["$defs"]


def _found(
    action_record: dict[str, Any],
    *,
    kind: str = "contractor",
    late: bool = False,
    entitlement: str = "sandbox",
) -> Attribution:
    person = PersonFacts("p1", "cora@contractor.example", kind, frozenset({"dev"}), {})
    session = SessionFacts(
        "s1",
        "g1",
        entitlement,
        "arn:aws:iam::111122223333:role/sandbox",
        "ASIA1",
        "broker-g1-x",
        person,
    )
    return Attribution(
        person,
        session,
        "access_key",
        action_of(action_record),
        datetime(2026, 3, 7, tzinfo=UTC),
        late,
        None,
    )


def _record(source: str, name: str, **fields: Any) -> dict[str, Any]:
    return {
        "eventSource": f"{source}.amazonaws.com",
        "eventName": name,
        "awsRegion": "eu-west-1",
        "sourceIPAddress": "203.0.113.9",
        **fields,
    }


def _fired(engine: DetectionEngine, record: dict[str, Any], **kwargs: Any) -> list[str]:
    return [hit.rule.id for hit in engine.match(record, _found(record, **kwargs))]


def test_matching_by_every_kind_of_condition(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        """\
        - id: big-ami
          match:
            actions: ["ec2:run*"]
            request_parameters: {instancesSet.items.imageId: ami-bad*, instanceType: ["*.metal"]}
        - id: secret-bucket
          match: {resources: ["arn:aws:s3:::secret*"], outcome: failed}
        - id: far-region
          match: {not_regions: ["eu-*"]}
        - id: own-region
          match: {outside_entitlement_region: true}
        - id: off-network
          match: {source_ip_outside_network: true, entitlements: ["sand*"]}
        - id: staff-late
          match: {after_grant_end: true, who: {kinds: [staff]}}
        """,
    )
    engine = DetectionEngine(loaded.policy.detections, loaded.policy.entitlements)
    run = _record(
        "ec2",
        "RunInstances",
        requestParameters={
            "instanceType": "m5.metal",
            "instancesSet": {"items": [{"imageId": "ami-good"}, {"imageId": "ami-bad1"}]},
        },
    )
    assert _fired(engine, run) == ["big-ami"]
    hit = engine.match(run, _found(run))[0]
    assert hit.reasons == (
        "ec2:RunInstances",
        "instancesSet.items.imageId ami-bad1",
        "instanceType m5.metal",
    )
    run["requestParameters"]["instanceType"] = "m5.large"
    assert _fired(engine, run) == []

    read = _record(
        "s3",
        "GetObject",
        errorCode="AccessDenied",
        resources=[{"ARN": "arn:aws:s3:::secret-data/k", "type": "AWS::S3::Object"}],
    )
    assert _fired(engine, read) == ["secret-bucket"]
    del read["errorCode"]
    assert _fired(engine, read) == []

    assert _fired(engine, _record("s3", "ListBuckets", awsRegion="us-west-2")) == [
        "far-region",
        "own-region",
    ]
    assert _fired(engine, _record("iam", "ListUsers", awsRegion="us-east-1")) == ["far-region"]
    assert _fired(engine, _record("s3", "ListBuckets", sourceIPAddress="198.51.100.1")) == [
        "off-network"
    ]
    assert _fired(engine, _record("s3", "ListBuckets", sourceIPAddress="s3.amazonaws.com")) == []
    assert (
        _fired(
            engine,
            _record("s3", "ListBuckets", sourceIPAddress="198.51.100.1"),
            entitlement="other",
        )
        == []
    )
    assert _fired(engine, _record("s3", "ListBuckets"), late=True) == []  # a contractor
    assert _fired(engine, _record("s3", "ListBuckets"), late=True, kind="staff") == ["staff-late"]


def test_the_brokers_own_assume_role_matches_no_rule(tmp_path: Path) -> None:
    loaded = _load(tmp_path, "- id: off-network\n  match: {source_ip_outside_network: true}\n")
    engine = DetectionEngine(loaded.policy.detections, loaded.policy.entitlements)
    record = _record("sts", "AssumeRole", sourceIPAddress="198.51.100.10")
    call = _found(record)
    assert [h.rule.id for h in engine.match(record, call)] == ["off-network"]
    own = Attribution(call.person, call.session, "assume_role", call.action, call.event_time,
                      False, None)  # fmt: skip
    assert engine.match(record, own) == []
