"""The JSON API under /api/v1: thin handlers over GrantService."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker.errors import BadRequest, NotFound
from broker.grants import Caller, GrantService, grant_summary
from broker.policy import (
    Decision,
    Entitlement,
    describe_person,
    format_duration,
    parse_duration,
)
from broker.services import grant_service
from broker.web.authn import authenticate, request_meta
from broker.web.openapi import OPENAPI
from broker.web.security import issue_limit

bp = Blueprint("api", __name__, url_prefix="/api/v1")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrantBody(_Body):
    """POST /grants."""

    entitlement: str = Field(min_length=1, max_length=64)
    reason: str | None = Field(default=None, max_length=1000)
    duration: str | int | None = None

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            _to_delta(value)
        return value


class CredentialsBody(GrantBody):
    """POST /credentials."""


class DecisionBody(_Body):
    """POST /grants/<id>/approve|deny|revoke."""

    comment: str | None = Field(default=None, max_length=1000)


def _to_delta(value: str | int) -> timedelta:
    if isinstance(value, int):
        return timedelta(seconds=value)
    return parse_duration(value)


MAX_JSON_DEPTH = 32


def json_depth_exceeds(raw: bytes, limit: int) -> bool:
    """True when JSON text nests arrays/objects deeper than `limit` (strings are skipped)."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def _body(model: type[_Body]) -> Any:
    if not request.is_json:
        raise BadRequest(
            "The request body must be a JSON object.",
            hint="Send Content-Type: application/json with a JSON body.",
        )
    raw = request.get_data(cache=True)
    if json_depth_exceeds(raw, MAX_JSON_DEPTH):
        raise BadRequest(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad syntax, bad UTF-8, a 5,000-digit number
        raise BadRequest(
            f"The request body is not valid JSON ({str(exc)[:120]}).",
            hint="Send Content-Type: application/json with a JSON object.",
        ) from None
    if not isinstance(data, dict):
        raise BadRequest(
            "The request body must be a JSON object.",
            hint="Send Content-Type: application/json with a JSON body.",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequest(f"Invalid request: {problems}.") from exc


def _service_and_caller() -> tuple[GrantService, Caller]:
    service = grant_service()
    return service, authenticate(service)


def client_region(entitlement: Entitlement | None) -> str:
    """The region engineers' tools should use: the entitlement's, else the broker's default."""
    if entitlement is not None and entitlement.region:
        return entitlement.region
    config = current_app.config
    return str(config.get("DEFAULT_CLIENT_REGION") or config["AWS_REGION"])


def decision_view(decision: Decision) -> dict[str, Any]:
    """JSON view of a policy decision."""
    entitlement = decision.entitlement
    return {
        "id": decision.entitlement_id,
        "description": entitlement.description if entitlement else None,
        "role_arn": entitlement.role_arn if entitlement else None,
        "verdict": decision.verdict.value,
        "allowed": decision.allowed,
        "reasons": list(decision.reasons),
        "require_reason": decision.require_reason,
        "max_duration": format_duration(decision.max_duration),
        "max_grant": format_duration(decision.max_grant),
        "region": client_region(entitlement),
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI document of this API."""
    return jsonify(OPENAPI)


@bp.get("/me")
def me() -> Response:
    """Who the broker thinks the caller is."""
    service, caller = _service_and_caller()
    person = caller.person
    return jsonify(
        email=person.identity.email,
        subject=person.identity.subject,
        issuer=person.identity.issuer,
        groups=sorted(person.identity.groups),
        kind=person.kind,
        valid_until=person.valid_until.isoformat() if person.valid_until else None,
        sponsor=person.sponsor,
        source_identity=caller.source_identity,
        admin=service.policy.evaluator.is_admin(person),
        auditor=service.policy.evaluator.is_auditor(person),
        summary=describe_person(service.policy.evaluator, person, service.clock()),
    )


@bp.get("/entitlements")
def entitlements() -> Response:
    """Every entitlement: what the caller may use, and for the rest why not."""
    service, caller = _service_and_caller()
    decisions = service.entitlements(caller, request_meta())
    return jsonify(entitlements=[decision_view(d) for d in decisions])


@bp.get("/grants")
def list_grants() -> Response:
    """The caller's grants (`?all=1` includes ended ones)."""
    service, caller = _service_and_caller()
    include = request.args.get("all") in ("1", "true")
    return jsonify(grants=grant_summary(service.list_grants(caller, include_ended=include)))


@bp.post("/grants")
def create_grant() -> tuple[Response, int]:
    """Request a grant: active at once, or pending approval."""
    service, caller = _service_and_caller()
    body: GrantBody = _body(GrantBody)
    grant = service.request_grant(
        caller,
        body.entitlement,
        reason=body.reason,
        duration=_to_delta(body.duration) if body.duration is not None else None,
        meta=request_meta(),
    )
    return jsonify(grant=grant_summary([grant])[0]), 201 if grant.status == "active" else 202


@bp.get("/approvals")
def approvals() -> Response:
    """Pending requests the caller may decide."""
    service, caller = _service_and_caller()
    return jsonify(grants=grant_summary(service.pending_for_approver(caller)))


@bp.post("/grants/<grant_id>/<action>")
def decide(grant_id: str, action: str) -> Response:
    """Approve or deny a pending request, or revoke a grant early (owner or admin)."""
    if action not in ("approve", "deny", "revoke"):
        raise NotFound(f"No action {action!r} on grants; use approve, deny or revoke.")
    service, caller = _service_and_caller()
    body: DecisionBody = _body(DecisionBody)
    meta = request_meta()
    if action == "revoke":
        grant = service.revoke(caller, grant_id, reason=body.comment, meta=meta)
    else:
        step = service.approve if action == "approve" else service.deny
        grant = step(caller, grant_id, comment=body.comment, meta=meta)
    return jsonify(grant=grant_summary([grant])[0])


@bp.post("/credentials")
def credentials() -> tuple[Response, int]:
    """Issue credentials for an entitlement; shown once, never stored."""
    service, caller = _service_and_caller()
    body: CredentialsBody = _body(CredentialsBody)
    issued = service.issue(
        caller,
        body.entitlement,
        duration=_to_delta(body.duration) if body.duration is not None else None,
        reason=body.reason,
        meta=request_meta(),
        limit=issue_limit(caller.principal_id),
    )
    creds = issued.credentials
    response = jsonify(
        entitlement=issued.entitlement_id,
        grant_id=issued.grant_id,
        session_id=issued.session_id,
        role_arn=creds.assumed_role_arn,
        role_session_name=creds.role_session_name,
        source_identity=creds.source_identity,
        duration_seconds=creds.duration_seconds,
        region=client_region(service.policy.evaluator.entitlement(issued.entitlement_id)),
        credentials={
            "AccessKeyId": creds.access_key_id,
            "SecretAccessKey": creds.secret_access_key,
            "SessionToken": creds.session_token,
            "Expiration": creds.expiration.isoformat().replace("+00:00", "Z"),
        },
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response, 201
