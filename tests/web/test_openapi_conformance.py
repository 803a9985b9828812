"""What the API answers is what its OpenAPI document says it answers."""

from __future__ import annotations

from typing import Any

import jsonschema
from apibed import Bed

DEV = ("developers",)


def _documented(doc: dict[str, Any], path: str, method: str) -> set[str]:
    return set(doc["paths"][path][method]["responses"])


def test_statuses_seen_are_documented_and_bodies_match_the_error_schema(bed: Bed) -> None:
    doc = bed.client.get("/api/v1/openapi.json").json
    error_schema = doc["components"]["schemas"]["Error"]
    token = bed.token("dev@example.com", DEV)
    seen: list[tuple[str, str, Any]] = []

    def call(method: str, path: str, documented_as: str, **kwargs: Any) -> Any:
        response = bed.call(
            method.upper(), path.replace("{grant_id}", "g-unknown"), token, **kwargs
        )
        seen.append((documented_as, method, response))
        return response

    for action in ("approve", "deny", "revoke"):
        call("post", f"/grants/{{grant_id}}/{action}", f"/grants/{{grant_id}}/{action}", json={})
    granted = bed.call("POST", "/grants", token, json={"entitlement": "app-read"})
    grant_id = granted.json["grant"]["id"]
    for _ in range(2):  # the second revoke finds the grant already ended: 409
        seen.append(
            (
                "/grants/{grant_id}/revoke",
                "post",
                bed.call("POST", f"/grants/{grant_id}/revoke", token, json={}),
            )
        )
    call("post", "/credentials", "/credentials", json={"entitlement": ""})
    call("post", "/credentials", "/credentials", json={"entitlement": "no-such-thing"})
    call("post", "/grants", "/grants", json={"entitlement": "app-read", "extra": 1})
    sre = bed.token("sam@example.com", ("sre",))
    ask = {"entitlement": "app-admin", "reason": "incident 7"}
    assert bed.call("POST", "/grants", sre, json=ask).status_code == 202
    twice = bed.call("POST", "/grants", sre, json=ask)  # one live grant per entitlement
    assert twice.status_code == 409
    seen.append(("/grants", "post", twice))
    statuses = {(path, r.status_code) for path, _, r in seen}
    assert ("/grants/{grant_id}/revoke", 409) in statuses and (
        "/grants/{grant_id}/approve",
        404,
    ) in statuses
    for path, method, response in seen:
        assert str(response.status_code) in _documented(doc, path, method), (
            path,
            response.status_code,
        )
        if response.status_code >= 400:
            jsonschema.validate(response.json, error_schema)


def test_schema_refuses_what_the_api_refuses(bed: Bed) -> None:
    doc = bed.client.get("/api/v1/openapi.json").json
    body = doc["components"]["schemas"]["GrantBody"]
    validator = jsonschema.Draft202012Validator(body)
    assert not validator.is_valid({"entitlement": ""})
    assert validator.is_valid({"entitlement": "app-read", "reason": None})
    token = bed.token("dev@example.com", DEV)
    refused = bed.call("POST", "/grants", token, json={"entitlement": ""})
    assert refused.status_code == 400


def test_unsupported_methods_say_which_methods_work(bed: Bed) -> None:
    for method in ("TRACE", "DELETE", "PUT"):
        response = bed.client.open("/api/v1/me", method=method)
        assert response.status_code == 405, method
        assert "GET" in response.headers["Allow"], method
        assert response.json["code"] == "method_not_allowed"
