"""The test identity provider (oidc-provider on loopback) behaves like a real OP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet
from oidc_provider import OidcProvider, OidcProviderError, node_modules_present, pkce_pair

pytestmark = pytest.mark.skipif(
    not node_modules_present(), reason="run `npm ci` in tests/node for the OIDC test provider"
)

WEB_REDIRECT = "http://127.0.0.1:9/auth/callback"
NATIVE_REDIRECT = "http://127.0.0.1/cli/callback"
CLIENTS: list[dict[str, Any]] = [
    {
        "client_id": "broker",
        "client_secret": "broker-test-secret",
        "redirect_uris": [WEB_REDIRECT],
        "post_logout_redirect_uris": ["http://127.0.0.1:9/signed-out"],
    },
    {
        "client_id": "broker-cli",
        "token_endpoint_auth_method": "none",
        "application_type": "native",
        "redirect_uris": [NATIVE_REDIRECT],
        "id_token_signed_response_alg": "ES256",
    },
]
USERS: list[dict[str, Any]] = [
    {
        "sub": "u-dana",
        "email": "dana@contractor.example",
        "name": "Dana",
        "groups": ["contractors", "s3-readers"],
        "amr": ["pwd", "mfa"],
        "acr": "urn:broker:test:mfa",
    },
    {"sub": "u-alex", "email": "alex@corp.example", "name": "Alex", "groups": ["admins"]},
]


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProvider]:
    with OidcProvider(clients=CLIENTS, users=USERS, ttl={"IdToken": 300}) as provider:
        yield provider


def _keyset(idp: OidcProvider) -> KeySet:
    return KeySet.import_key_set(requests.get(idp.jwks_uri, timeout=10).json())


def _verify(idp: OidcProvider, id_token: str, audience: str = "broker") -> dict[str, Any]:
    keys = _keyset(idp)
    token = jwt.decode(id_token, keys, algorithms=["RS256", "ES256"])
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": idp.issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
    )
    registry.validate(token.claims)
    return dict(token.claims)


def test_discovery_document(idp: OidcProvider) -> None:
    doc = idp.discovery()
    assert idp.issuer.startswith("http://127.0.0.1:")
    assert doc["issuer"] == idp.issuer
    assert doc["jwks_uri"].startswith(idp.issuer)
    assert doc["end_session_endpoint"].startswith(idp.issuer)
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {"openid", "email", "profile", "groups"} <= set(doc["scopes_supported"])
    algs = {k["alg"] for k in idp.jwks()["keys"]}
    assert algs == {"RS256", "ES256"}
    assert all("d" not in k for k in idp.jwks()["keys"]), "private key material published"


def test_id_token_from_code_pkce_flow_verifies_and_carries_claims(idp: OidcProvider) -> None:
    tokens = idp.login("dana@contractor.example", nonce="n-123")
    assert tokens["token_type"] == "Bearer"
    assert tokens["access_token"]
    claims = _verify(idp, tokens["id_token"])
    assert claims["sub"] == "u-dana"
    assert claims["email"] == "dana@contractor.example"
    assert claims["email_verified"] is True
    assert claims["groups"] == ["contractors", "s3-readers"]
    assert claims["amr"] == ["pwd", "mfa"]
    assert claims["acr"] == "urn:broker:test:mfa"
    assert claims["nonce"] == "n-123"
    assert claims["exp"] - claims["iat"] == 300  # ttl.IdToken honoured


def test_login_by_sub_and_public_native_client_with_es256(idp: OidcProvider) -> None:
    # Native clients may use any loopback port (RFC 8252); this one is public and signs ES256.
    redirect = "http://127.0.0.1:54321/cli/callback"
    tokens = idp.login("u-alex", client_id="broker-cli", redirect_uri=redirect)
    header = jwt.decode(tokens["id_token"], _keyset(idp)).header
    assert header["alg"] == "ES256"
    claims = _verify(idp, tokens["id_token"], audience="broker-cli")
    assert claims["email"] == "alex@corp.example"
    assert claims["groups"] == ["admins"]
    assert claims["amr"] == ["pwd"]  # default
    assert "acr" not in claims


def test_authorization_request_without_pkce_is_refused(idp: OidcProvider) -> None:
    url = idp.authorization_url(client_id="broker", state="st-1")  # no code_challenge
    final = idp.complete_login(url, "u-dana", redirect_prefix=WEB_REDIRECT)
    query = parse_qs(urlsplit(final).query)
    assert final.startswith(WEB_REDIRECT)
    assert query["error"] == ["invalid_request"]
    assert "requires PKCE" in query["error_description"][0]
    assert "code" not in query


def test_code_exchange_needs_the_right_verifier(idp: OidcProvider) -> None:
    _verifier, challenge = pkce_pair()
    url = idp.authorization_url(client_id="broker", code_challenge=challenge)
    final = idp.complete_login(url, "u-dana", redirect_prefix=WEB_REDIRECT)
    code = parse_qs(urlsplit(final).query)["code"][0]
    other_verifier, _ = pkce_pair()
    resp = idp.exchange_code(code, code_verifier=other_verifier, client_id="broker")
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


def test_unknown_user_is_refused(idp: OidcProvider) -> None:
    with pytest.raises(OidcProviderError, match="unknown user"):
        idp.login("mallory@evil.example")


def test_sso_session_and_rp_initiated_logout(idp: OidcProvider) -> None:
    http = requests.Session()
    first = idp.login("u-dana", session=http)
    # A second authorization with the same cookies goes straight back with a code (SSO).
    _verifier, challenge = pkce_pair()
    url = idp.authorization_url(client_id="broker", code_challenge=challenge)
    resp = http.get(url, allow_redirects=False, timeout=10)
    location = ""
    while resp.is_redirect:
        location = urljoin(resp.url, resp.headers["location"])
        if not location.startswith(idp.issuer):
            break
        resp = http.get(location, allow_redirects=False, timeout=10)
    assert location.startswith(WEB_REDIRECT + "?code=")
    done = idp.logout(
        session=http,
        id_token_hint=first["id_token"],
        post_logout_redirect_uri="http://127.0.0.1:9/signed-out",
    )
    assert done.startswith("http://127.0.0.1:9/signed-out")
    # After logout the provider asks for a login again.
    page = http.get(url, timeout=10)
    assert 'name="login"' in page.text
    assert "Sign in" in page.text
