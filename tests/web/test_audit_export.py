"""GET /audit/export: auditors only, streamed, audited, and the download verifies offline."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from apibed import Bed
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoints import sign_head
from broker.audit.verify_file import verify_lines
from broker.auth.identity import derive_source_identity
from broker.db import get_database
from broker.web import audit_export

DEV = ("developers",)
AUDITOR = ("compliance",)


@pytest.fixture
def audited(bed: Bed) -> Bed:
    """The bed with the export blueprint registered (the app factory will do this)."""
    if "audit_export" not in bed.app.blueprints:
        bed.app.register_blueprint(audit_export.bp)
    return bed


def _export(bed: Bed, token: str | None, query: str = "") -> object:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return bed.client.get(f"/audit/export{query}", headers=headers)


def test_only_auditors_may_export(audited: Bed) -> None:
    assert _export(audited, None).status_code == 401  # type: ignore[attr-defined]
    developer = audited.token("dev@example.com", DEV)
    refused = _export(audited, developer)
    assert refused.status_code == 403  # type: ignore[attr-defined]
    assert "auditors" in refused.get_data(as_text=True)  # type: ignore[attr-defined]


def test_auditor_download_verifies_and_joins_with_cloudtrail(audited: Bed, tmp_path: Path) -> None:
    developer = audited.token("dev@example.com", DEV)
    issued = audited.call("POST", "/credentials", developer, json={"entitlement": "app-read"})
    assert issued.status_code == 201, issued.json
    key = Ed25519PrivateKey.generate()
    with audited.app.app_context(), get_database().session() as session:
        assert sign_head(session, key) is not None
    auditor = audited.token("audra@example.com", AUDITOR)

    response = _export(audited, auditor)
    assert response.status_code == 200  # type: ignore[attr-defined]
    assert response.is_streamed  # type: ignore[attr-defined]
    assert "attachment" in response.headers["Content-Disposition"]  # type: ignore[attr-defined]
    data: bytes = response.get_data()  # type: ignore[attr-defined]
    result = verify_lines(io.BytesIO(data), key.public_key())
    assert result.ok and result.checkpoints == 1, result.summary()

    records = [json.loads(line) for line in data.splitlines()]
    issued_event = next(
        r for r in records if r["type"] == "event" and r["body"]["action"] == "credentials.issued"
    )
    details = issued_event["body"]["details"]
    assert details["role_session_name"] == issued.json["role_session_name"]
    assert details["source_identity"] == derive_source_identity("urn:test", "dev@example.com")
    assert details["access_key_id"] == issued.json["credentials"]["AccessKeyId"]

    # The export itself was audited before it was streamed.
    again = _export(audited, auditor, "?format=csv&action=audit.export")
    rows = list(csv.DictReader(io.StringIO(again.get_data(as_text=True), newline="")))  # type: ignore[attr-defined]
    assert rows and rows[0]["actor"] == "audra@example.com"
    assert json.loads(rows[0]["details"])["format"] == "jsonl"


def test_filters_and_formats(audited: Bed) -> None:
    developer = audited.token("dev@example.com", DEV)
    audited.call("POST", "/credentials", developer, json={"entitlement": "app-read"})
    auditor = audited.token("audra@example.com", AUDITOR)
    ocsf = _export(audited, auditor, "?format=ocsf&person=dev@example.com")
    assert ocsf.status_code == 200  # type: ignore[attr-defined]
    events = [json.loads(x) for x in ocsf.get_data(as_text=True).splitlines()]  # type: ignore[attr-defined]
    assert events and {e["class_uid"] for e in events} <= {3002, 3003, 3004, 3005}
    bad = _export(audited, auditor, "?format=xml")
    assert bad.status_code == 400  # type: ignore[attr-defined]
    bad_time = _export(audited, auditor, "?since=yesterday")
    assert bad_time.status_code == 400  # type: ignore[attr-defined]
