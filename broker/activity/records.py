"""What is kept of an attributed record: the compact row, the facts a detection names, and the
whole record with its secrets removed (only when configured)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from broker.activity.attribution import Attribution

SUMMARY_KEYS = (
    "instanceType",
    "roleArn",
    "roleSessionName",
    "userName",
    "groupName",
    "policyArn",
    "policyName",
    "bucketName",
    "name",
    "trailName",
    "functionName",
    "dBInstanceIdentifier",
)
"""Top-level request parameters kept in the compact row (scalars, cut to 256 characters)."""
_SECRET_KEY = re.compile(r"secret|sessiontoken|session_token|password|privatekey", re.IGNORECASE)


def activity_row(
    record: Mapping[str, Any],
    attribution: Attribution,
    *,
    file_id: int | None,
    keep_record: bool,
) -> dict[str, Any]:
    """The compact row stored for an attributed record (whole record only when asked)."""
    identity = record.get("userIdentity")
    if not isinstance(identity, dict):
        identity = {}
    session = attribution.session
    return {
        "event_id": str(record["eventID"])[:64],
        "event_time": attribution.event_time,
        "action": attribution.action[:160],
        "aws_region": _text(record.get("awsRegion"), 32),
        "account_id": _text(record.get("recipientAccountId"), 12),
        "source_ip": _text(record.get("sourceIPAddress"), 64),
        "user_agent": _text(record.get("userAgent"), 256),
        "error_code": _text(record.get("errorCode"), 128),
        # The session's key: for the AssumeRole that made it, not the broker's own caller key.
        "access_key_id": session.access_key_id
        if session
        else _text(identity.get("accessKeyId"), 128),
        "matched_by": attribution.matched_by,
        "principal_id": attribution.person.principal_id,
        "grant_id": session.grant_id if session else None,
        "session_id": session.session_id if session else None,
        "entitlement_id": session.entitlement_id if session else None,
        "role_arn": session.role_arn if session else None,
        "after_grant_end": attribution.after_grant_end,
        "resources": resources_of(record),
        "summary": summary_of(record),
        "file_id": file_id,
        "record": redact(record) if keep_record else None,
    }


def resources_of(record: Mapping[str, Any]) -> list[str]:
    """The ARNs a record names in ``resources`` (at most 20)."""
    found = record.get("resources")
    if not isinstance(found, list):
        return []
    arns = [r["ARN"] for r in found if isinstance(r, dict) and isinstance(r.get("ARN"), str)]
    return arns[:20]


def summary_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A few request parameters people ask about (instance type, user name, role ARN...)."""
    params = record.get("requestParameters")
    if not isinstance(params, dict):
        return {}
    out: dict[str, Any] = {}
    for name in SUMMARY_KEYS:
        value = params.get(name)
        if isinstance(value, str):
            out[name] = value[:256]
        elif isinstance(value, bool | int):
            out[name] = value
    return out


def redact(value: Any) -> Any:
    """A copy of a record without anything secret-looking (session tokens, passwords)."""
    if isinstance(value, dict):
        return {
            k: ("<redacted>" if _SECRET_KEY.search(str(k)) else redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def detection_facts(record: Mapping[str, Any], found: Attribution) -> dict[str, Any]:
    """What a detection names about the record, for the audit trail and notifications."""
    session = found.session
    identity = record.get("userIdentity")
    key = identity.get("accessKeyId") if isinstance(identity, dict) else None
    return {
        "action": found.action,
        "region": str(record.get("awsRegion") or ""),
        "account": str(record.get("recipientAccountId") or ""),
        "source_ip": str(record.get("sourceIPAddress") or ""),
        "error_code": str(record.get("errorCode") or ""),
        "access_key_id": key if isinstance(key, str) else "",
        "grant_id": session.grant_id if session else None,
        "session_id": session.session_id if session else None,
        "entitlement": session.entitlement_id if session else None,
        "role_arn": session.role_arn if session else None,
        "after_grant_end": found.after_grant_end,
    }
