"""OCSF events validate against the OCSF 1.5.0 JSON schema of their class (ocsf-json-schema)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from audittrail import export_text, seed

from broker.audit.ocsf import OCSF_VERSION, mapping_for, to_ocsf
from broker.db import Database

jsonschema = pytest.importorskip("jsonschema")
ocsf_json_schema = pytest.importorskip("ocsf_json_schema")

BODY = {
    "seq": 7,
    "ts": "2024-05-01T09:00:00.123456Z",
    "actor": "alice@example.com",
    "target": "app-read",
    "decision": "allow",
    "reason": None,
    "ip": "10.0.0.7",
    "user_agent": "broker-cli/1",
    "client": "cli",
    "policy_version": "p" * 64,
    "details": {},
}
ACTIONS = [
    ("auth.sign_in", "allow", {}),
    ("auth.sign_in_failed", "deny", {"code": "unauthenticated"}),
    ("auth.sign_out", None, {}),
    ("token.mint", "allow", {"token_id": "t1"}),
    ("grant.request", "pending", {"grant_id": "g1"}),
    ("grant.request", "deny", {"code": "policy_denied"}),
    ("grant.approve", "allow", {"grant_id": "g1", "requester": "bob@example.com"}),
    ("grant.deny", "deny", {"grant_id": "g1", "requester": "bob@example.com"}),
    ("grant.revoked", "revoke", {"grant_id": "g1", "person": "bob@example.com"}),
    ("grant.expired", "end", {"grant_id": "g1", "person": "bob@example.com"}),
    ("grant.lapsed", "end", {"grant_id": "g1", "person": "bob@example.com"}),
    ("credentials.issue", "allow", {"role_session_name": "alice-1", "source_identity": "alice"}),
    ("credentials.issue", "deny", {"code": "policy_denied"}),
    (
        "credentials.issued",
        "allow",
        {
            "access_key_id": "ASIA1",
            "role_session_name": "alice-1",
            "source_identity": "alice",
            "expires_at": "x",
        },
    ),  # fmt: skip
    ("credentials.failed", "error", {}),
    ("principal.cut_off", "revoke", {}),
    ("principal.restore", "allow", {}),
    ("revocation.applied", "allow", {"role_arn": "arn:aws:iam::1:role/r"}),
    ("audit.export", "allow", {"format": "csv", "filters": {}}),
    ("something.new", None, {}),
]


@cache
def _validator(class_uid: int) -> Any:
    schema = ocsf_json_schema.OcsfJsonSchemaEmbedded(
        ocsf_json_schema.get_ocsf_schema(version=OCSF_VERSION)
    )
    name = schema.lookup_class_name_from_uid(class_uid)
    return jsonschema.Draft202012Validator(schema.get_class_schema(name))


def _check(event: dict[str, Any]) -> None:
    errors = sorted(_validator(event["class_uid"]).iter_errors(event), key=str)
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    assert event["category_uid"] == event["class_uid"] // 1000
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    assert event["metadata"]["version"] == OCSF_VERSION
    assert event["metadata"]["product"]["name"] == "broker"
    assert isinstance(event["time"], int) and event["severity_id"] in (1, 2, 3)


@pytest.mark.parametrize(("action", "decision", "details"), ACTIONS)
def test_each_action_validates(action: str, decision: str | None, details: dict[str, Any]) -> None:
    body = {**BODY, "action": action, "decision": decision, "details": details}
    if action.startswith("principal."):
        body["target"] = "bob@example.com"
    event = to_ocsf(body, "h" * 64)
    _check(event)


def test_classes_of_the_mapping() -> None:
    assert mapping_for("auth.sign_in").class_uid == 3002
    assert mapping_for("auth.sign_out").activity_id == 2
    assert mapping_for("grant.approve").class_uid == 3005
    assert mapping_for("grant.revoked").activity_id == 2
    assert mapping_for("credentials.issued").class_uid == 3004
    assert mapping_for("principal.cut_off").class_uid == 3001
    assert mapping_for("revocation.role_wide").class_uid == 3005
    assert mapping_for("never.seen").class_uid == 3004


def test_subject_and_session_fields() -> None:
    approve = to_ocsf(
        {**BODY, "action": "grant.approve", "details": {"grant_id": "g", "requester": "b@x.io"}},
        "h" * 64,
    )
    assert approve["user"]["email_addr"] == "b@x.io"
    assert approve["actor"]["user"]["email_addr"] == "alice@example.com"
    assert approve["privileges"] == ["app-read"] and approve["metadata"]["correlation_uid"] == "g"
    issued = to_ocsf(
        {**BODY, "action": "credentials.issued",
         "details": {"access_key_id": "ASIA1", "role_session_name": "alice-1"}},
        "h" * 64,
    )  # fmt: skip
    assert issued["entity"]["uid"] == "ASIA1" and issued["entity"]["name"] == "alice-1"
    assert issued["time"] == 1714554000123


def test_exported_ocsf_stream_validates(database: Database) -> None:
    seed(database, 3)
    events = [json.loads(line) for line in export_text(database, "ocsf").splitlines()]
    assert len(events) == 12
    for event in events:
        _check(event)
    assert [e["metadata"]["sequence"] for e in events] == list(range(1, 13))
