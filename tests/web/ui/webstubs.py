"""A tiny stub OpenID issuer (and AWS federation endpoint) on loopback, for forged-token tests.

The real `oidc-provider` never signs a bad token on request; this stub signs whatever a test
asks for (wrong iss, expired, unknown kid, alg none, HS256 with the public key...) and serves
discovery, JWKS, a token endpoint that checks PKCE, and `getSigninToken`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

CLIENT_ID = "broker"
CLIENT_SECRET = "broker-test-secret"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class StubIssuer:
    """Serves an issuer on 127.0.0.1; `expect()` prepares the next token response."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "good", "alg": "RS256"})
        self.rogue = RSAKey.generate_key(2048, parameters={"kid": "rogue", "alg": "RS256"})
        self._codes: dict[str, tuple[str, str, Callable[[str], str]]] = {}
        self.token_requests: list[dict[str, Any]] = []
        self.federation_requests: list[dict[str, list[str]]] = []
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.issuer = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> StubIssuer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- tokens -----------------------------------------------------------------------------

    def claims(self, nonce: str | None, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "dev",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "email": "dev@example.com",
            "email_verified": True,
            "groups": ["developers"],
            "amr": ["pwd", "mfa"],
        }
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any], *, key: RSAKey | None = None) -> str:
        key = key or self.key
        return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)

    def unsigned(self, claims: dict[str, Any]) -> str:
        header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{b64url(json.dumps(claims).encode())}."

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The classic key-confusion forgery: HMAC keyed with the issuer's public key (made by
        hand, because joserfc rightly refuses to use a public key as an HMAC secret)."""
        header = b64url(json.dumps({"alg": "HS256", "kid": self.key.kid}).encode())
        payload = b64url(json.dumps(claims).encode())
        signing_input = f"{header}.{payload}".encode()
        secret = self.key.as_pem(private=False)
        signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(signature)}"

    def expect(self, authorization_url: str, mint: Callable[[str], str]) -> dict[str, str]:
        """Accept the broker's authorization request; return the callback params to use.

        `mint(nonce)` makes the ID token the token endpoint will return for that code.
        """
        query = {k: v[0] for k, v in parse_qs(urlsplit(authorization_url).query).items()}
        assert query["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        self._codes[code] = (query["code_challenge"], query["nonce"], mint)
        return {"code": code, "state": query["state"], "nonce": query["nonce"]}

    # -- the HTTP side ----------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self._route(request)
        return response(environ, start_response)

    def _route(self, request: Request) -> Response:
        if request.path == "/.well-known/openid-configuration":
            return _json(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks",
                    "end_session_endpoint": f"{self.issuer}/logout",
                    "code_challenge_methods_supported": ["S256"],
                }
            )
        if request.path == "/jwks":
            return _json({"keys": [self.key.as_dict(private=False)]})
        if request.path == "/token" and request.method == "POST":
            return self._token(request)
        if request.path == "/federation":
            self.federation_requests.append(parse_qs(urlsplit(request.url).query))
            return _json({"SigninToken": "stub-signin-token"})
        return Response("not found", status=404)

    def _token(self, request: Request) -> Response:
        form = request.form.to_dict()
        self.token_requests.append({**form, "authorization": request.headers.get("Authorization")})
        found = self._codes.pop(form.get("code", ""), None)
        if found is None:
            return _json({"error": "invalid_grant"}, status=400)
        challenge, nonce, mint = found
        verifier = form.get("code_verifier", "")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != challenge:
            return _json({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
        id_token = mint(nonce)
        return _json(
            {"access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}
        )


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
