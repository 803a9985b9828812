"""Map audit events to OCSF 1.5.0 events (Identity & Access Management category).

The mapping table is documented in docs/ocsf.md. Every event keeps its chain position and hash
in `metadata` (`sequence`, `uid`), so an OCSF record can be traced back to the signed trail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

OCSF_VERSION = "1.5.0"
PRODUCT = {"name": "broker", "vendor_name": "broker", "feature": {"name": "audit"}}
IAM_CATEGORY = 3

AUTHENTICATION = 3002
ACCOUNT_CHANGE = 3001
AUTHORIZE_SESSION = 3003
ENTITY_MANAGEMENT = 3004
USER_ACCESS = 3005

CLASS_NAMES = {
    ACCOUNT_CHANGE: "Account Change",
    AUTHENTICATION: "Authentication",
    AUTHORIZE_SESSION: "Authorize Session",
    ENTITY_MANAGEMENT: "Entity Management",
    USER_ACCESS: "User Access Management",
}
STATUS_SUCCESS, STATUS_FAILURE, STATUS_OTHER, STATUS_UNKNOWN = 1, 2, 99, 0
SEVERITY = {1: "Informational", 2: "Low", 3: "Medium"}


@dataclass(frozen=True)
class Placement:
    """Where one broker action lands in OCSF."""

    class_uid: int
    activity_id: int
    activity_name: str
    severity_id: int = 1


OTHER = 99
ACTIONS: dict[str, Placement] = {
    "auth.sign_in": Placement(AUTHENTICATION, 1, "Logon"),
    "auth.sign_in_failed": Placement(AUTHENTICATION, 1, "Logon", severity_id=2),
    "auth.sign_out": Placement(AUTHENTICATION, 2, "Logoff"),
    "token.mint": Placement(AUTHENTICATION, 3, "Authentication Ticket"),
    "grant.request": Placement(USER_ACCESS, 1, "Assign Privileges"),
    "grant.approve": Placement(USER_ACCESS, 1, "Assign Privileges"),
    "grant.deny": Placement(USER_ACCESS, 1, "Assign Privileges"),
    "grant.revoked": Placement(USER_ACCESS, 2, "Revoke Privileges", severity_id=2),
    "grant.expired": Placement(USER_ACCESS, 2, "Revoke Privileges"),
    "grant.lapsed": Placement(USER_ACCESS, OTHER, "Lapse"),
    "credentials.issue": Placement(AUTHORIZE_SESSION, 1, "Assign Privileges"),
    "credentials.issued": Placement(ENTITY_MANAGEMENT, 1, "Create"),
    "credentials.failed": Placement(ENTITY_MANAGEMENT, 1, "Create", severity_id=2),
    "credentials.outcome_unknown": Placement(USER_ACCESS, 2, "Revoke Privileges", severity_id=3),
    "credentials.unrecorded": Placement(USER_ACCESS, 2, "Revoke Privileges", severity_id=3),
    "principal.cut_off": Placement(ACCOUNT_CHANGE, 5, "Disable", severity_id=3),
    "principal.restore": Placement(ACCOUNT_CHANGE, 2, "Enable", severity_id=2),
    "audit.export": Placement(ENTITY_MANAGEMENT, 2, "Read"),
}
PREFIXES: dict[str, Placement] = {
    "revocation.": Placement(USER_ACCESS, 2, "Revoke Privileges", severity_id=2),
}
FALLBACK = Placement(ENTITY_MANAGEMENT, OTHER, "Other")
_FAILED = {"deny", "error", "failed", "failure"}
_USER_CLASSES = {AUTHENTICATION, ACCOUNT_CHANGE, AUTHORIZE_SESSION, USER_ACCESS}


def mapping_for(action: str) -> Placement:
    """The OCSF class and activity for a broker action (unknown actions: Entity Management)."""
    found = ACTIONS.get(action)
    if found is not None:
        return found
    for prefix, mapped in PREFIXES.items():
        if action.startswith(prefix):
            return mapped
    return FALLBACK


def to_ocsf(body: Mapping[str, Any], event_hash: str) -> dict[str, Any]:
    """One audit event (its chained body and hash) as an OCSF event of its class."""
    action: str = body["action"]
    details: Mapping[str, Any] = body.get("details") or {}
    mapped = mapping_for(action)
    status_id = _status(action, body.get("decision"))
    event: dict[str, Any] = {
        "class_uid": mapped.class_uid,
        "class_name": CLASS_NAMES[mapped.class_uid],
        "category_uid": IAM_CATEGORY,
        "category_name": "Identity & Access Management",
        "activity_id": mapped.activity_id,
        "activity_name": mapped.activity_name,
        "type_uid": mapped.class_uid * 100 + mapped.activity_id,
        "type_name": f"{CLASS_NAMES[mapped.class_uid]}: {mapped.activity_name}",
        "severity_id": mapped.severity_id,
        "severity": SEVERITY[mapped.severity_id],
        "time": _epoch_ms(body["ts"]),
        "status_id": status_id,
        "status": {1: "Success", 2: "Failure", 99: "Other", 0: "Unknown"}[status_id],
        "message": _message(body),
        "metadata": {
            "version": OCSF_VERSION,
            "product": PRODUCT,
            "uid": event_hash,
            "sequence": body["seq"],
            "log_name": "broker-audit",
            "event_code": action,
            **({"correlation_uid": details["grant_id"]} if details.get("grant_id") else {}),
        },
        "actor": _actor(body["actor"]),
        "unmapped": {
            "action": action,
            "decision": body.get("decision"),
            "target": body.get("target"),
            "client": body.get("client"),
            "policy_version": body.get("policy_version"),
            "details": dict(details),
        },
    }
    if status_id == STATUS_OTHER and body.get("decision"):
        event["status_detail"] = str(body["decision"])
    if body.get("reason"):
        event["status_detail"] = str(body["reason"])[:1000]
    if body.get("ip"):
        event["src_endpoint"] = {"ip": body["ip"]}
    if body.get("user_agent"):
        event["http_request"] = {"user_agent": body["user_agent"]}
    if mapped.class_uid in _USER_CLASSES:
        event["user"] = _user(_subject(body))
    if mapped.class_uid == AUTHENTICATION:
        event["service"] = {"name": "broker"}  # the class needs a service or a dst_endpoint
    if mapped.class_uid in (USER_ACCESS, AUTHORIZE_SESSION):
        event["privileges"] = [_privilege(body)]
    if mapped.class_uid == AUTHORIZE_SESSION:
        event["session"] = _session(details)
    if mapped.class_uid == ENTITY_MANAGEMENT:
        event["entity"] = _entity(action, body, details)
    return event


def _status(action: str, decision: Any) -> int:
    if action.endswith("_failed") or action.endswith(".failed") or decision in _FAILED:
        return STATUS_FAILURE
    if decision == "pending":
        return STATUS_OTHER
    return STATUS_SUCCESS


def _epoch_ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def _message(body: Mapping[str, Any]) -> str:
    parts = [str(body["action"])]
    if body.get("target"):
        parts.append(str(body["target"]))
    if body.get("decision"):
        parts.append(f"({body['decision']})")
    return " ".join(parts)


def _user(who: str) -> dict[str, Any]:
    if "@" in who:
        return {"name": who, "email_addr": who, "type_id": 1, "type": "User"}
    return {"name": who, "type_id": 99, "type": "Other"}


def _actor(who: str) -> dict[str, Any]:
    if who in ("system", "scheduler") or "@" not in who:
        return {"app_name": f"broker {who}"}
    return {"user": _user(who)}


def _subject(body: Mapping[str, Any]) -> str:
    """The person the event is about: the requester of a grant, else the target or actor."""
    details = body.get("details") or {}
    for key in ("person", "requester"):
        if isinstance(details.get(key), str):
            return str(details[key])
    if str(body["action"]).startswith("principal.") and body.get("target"):
        return str(body["target"])
    return str(body["actor"])


def _privilege(body: Mapping[str, Any]) -> str:
    details = body.get("details") or {}
    return str(details.get("entitlement") or body.get("target") or body["action"])


def _session(details: Mapping[str, Any]) -> dict[str, Any]:
    session: dict[str, Any] = {}
    if details.get("role_session_name"):
        session["uid"] = details["role_session_name"]
    if details.get("source_identity"):
        session["uid_alt"] = details["source_identity"]
    return session or {"uid": "unknown"}


def _entity(action: str, body: Mapping[str, Any], details: Mapping[str, Any]) -> dict[str, Any]:
    if action.startswith("credentials."):
        entity: dict[str, Any] = {
            "type": "AWS STS session",
            "name": details.get("role_session_name") or body.get("target") or action,
        }
        if details.get("access_key_id"):
            entity["uid"] = details["access_key_id"]
        data = {
            key: details[key]
            for key in ("source_identity", "expires_at", "entitlement", "session_id")
            if details.get(key)
        }
        if body.get("target"):
            data["role_arn"] = body["target"]
        if data:
            entity["data"] = data
        return entity
    return {"type": action.split(".", 1)[0], "name": str(body.get("target") or action)}
