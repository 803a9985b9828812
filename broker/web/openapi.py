"""The OpenAPI 3.1 description of /api/v1."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Malformed request"),
    "401": _json(_ref("Error"), "Missing, expired or forged token"),
    "403": _json(_ref("Error"), "Denied by policy"),
    "413": _json(_ref("Error"), "Request body too large"),
    "429": _json(_ref("Error"), "Rate limited; retry after the Retry-After seconds"),
    "503": _json(_ref("Error"), "Database, audit trail or AWS unavailable; nothing was done"),
}

_DECIDE = {
    "parameters": [
        {"name": "grant_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ],
    "requestBody": {"content": {"application/json": {"schema": _ref("DecisionBody")}}},
    "responses": {
        "200": _json({"type": "object", "properties": {"grant": _ref("Grant")}}, "Updated grant"),
        **_ERRORS,
        "404": _json(_ref("Error"), "No such grant of yours"),
        "409": _json(_ref("Error"), "The grant is no longer in a state this applies to"),
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "broker API", "version": "1", "description": "Temporary AWS credentials."},
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}],
    "paths": {
        "/me": {
            "get": {
                "summary": "The caller",
                "responses": {"200": _json(_ref("Me"), "The caller"), **_ERRORS},
            }
        },
        "/entitlements": {
            "get": {
                "summary": "Every entitlement and the decision for the caller",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "entitlements": {"type": "array", "items": _ref("Entitlement")}
                            },
                        },
                        "Decisions",
                    ),
                    **_ERRORS,
                },
            }
        },
        "/grants": {
            "get": {
                "summary": "The caller's grants",
                "parameters": [
                    {
                        "name": "all",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["1", "true"]},
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"grants": {"type": "array", "items": _ref("Grant")}},
                        },
                        "Grants",
                    ),
                    **_ERRORS,
                },
            },
            "post": {
                "summary": "Request a grant",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("GrantBody")}},
                },
                "responses": {
                    "201": _json(
                        {"type": "object", "properties": {"grant": _ref("Grant")}}, "Active grant"
                    ),
                    "202": _json(
                        {"type": "object", "properties": {"grant": _ref("Grant")}},
                        "Pending approval",
                    ),
                    **_ERRORS,
                    "409": _json(_ref("Error"), "A live grant for this entitlement exists"),
                },
            },
        },
        "/approvals": {
            "get": {
                "summary": "Requests the caller may decide",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"grants": {"type": "array", "items": _ref("Grant")}},
                        },
                        "Pending grants",
                    ),
                    **_ERRORS,
                },
            }
        },
        "/grants/{grant_id}/approve": {"post": {"summary": "Approve a pending request", **_DECIDE}},
        "/grants/{grant_id}/deny": {"post": {"summary": "Deny a pending request", **_DECIDE}},
        "/grants/{grant_id}/revoke": {"post": {"summary": "End a grant early", **_DECIDE}},
        "/credentials": {
            "post": {
                "summary": "Issue credentials (shown once)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("GrantBody")}},
                },
                "responses": {
                    "201": _json(_ref("Issued"), "Credentials"),
                    **_ERRORS,
                    "409": _json(_ref("Error"), "The grant changed while issuing; try again"),
                    "502": _json(_ref("Error"), "AWS refused or failed the call"),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A broker token (brk_...) or an ID token from the configured issuer",
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "hint": {"type": "string"},
                },
            },
            "Me": {
                "type": "object",
                "properties": {
                    "email": {"type": "string"},
                    "groups": {"type": "array", "items": {"type": "string"}},
                    "kind": {"type": "string"},
                    "valid_until": {"type": ["string", "null"]},
                    "source_identity": {"type": "string"},
                    "admin": {"type": "boolean"},
                    "auditor": {"type": "boolean"},
                },
            },
            "Entitlement": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "role_arn": {"type": ["string", "null"]},
                    "verdict": {"type": "string", "enum": ["allow", "approval", "deny"]},
                    "allowed": {"type": "boolean"},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "require_reason": {"type": "boolean"},
                    "max_duration": {"type": "string"},
                    "max_grant": {"type": "string"},
                    "region": {"type": "string", "description": "default region for tools"},
                },
            },
            "Grant": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "entitlement": {"type": "string"},
                    "role_arn": {"type": "string"},
                    "status": {
                        "type": "string",
                        "enum": ["pending", "active", "expired", "revoked", "denied", "lapsed"],
                    },
                    "reason": {"type": ["string", "null"]},
                    "created_at": {"type": "string", "format": "date-time"},
                    "expires_at": {"type": ["string", "null"], "format": "date-time"},
                },
            },
            "GrantBody": {
                "type": "object",
                "required": ["entitlement"],
                "additionalProperties": False,
                "properties": {
                    "entitlement": {"type": "string", "minLength": 1, "maxLength": 64},
                    "reason": {"type": ["string", "null"], "maxLength": 1000},
                    "duration": {
                        "oneOf": [
                            {"type": "string", "examples": ["1h", "90m"]},
                            {"type": "integer", "minimum": 900, "maximum": 43200},
                        ]
                    },
                },
            },
            "DecisionBody": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"comment": {"type": ["string", "null"], "maxLength": 1000}},
            },
            "Issued": {
                "type": "object",
                "properties": {
                    "entitlement": {"type": "string"},
                    "grant_id": {"type": "string"},
                    "role_arn": {"type": "string"},
                    "role_session_name": {"type": "string"},
                    "source_identity": {"type": "string"},
                    "duration_seconds": {"type": "integer"},
                    "region": {"type": "string", "description": "default region for tools"},
                    "credentials": {
                        "type": "object",
                        "properties": {
                            "AccessKeyId": {"type": "string"},
                            "SecretAccessKey": {"type": "string"},
                            "SessionToken": {"type": "string"},
                            "Expiration": {"type": "string", "format": "date-time"},
                        },
                    },
                },
            },
        },
    },
}
