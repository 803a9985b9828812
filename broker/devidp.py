"""INSECURE development identity provider for `broker dev` only: pick a demo user, no password.

It speaks enough OpenID Connect for the broker's real login code (discovery, JWKS, authorization
code + PKCE S256, nonce, RS256 ID tokens, userinfo, end-session), so dev mode exercises the same
path as production. Never point a production broker at it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, abort, jsonify, redirect, request
from flask.typing import ResponseReturnValue
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import BaseWSGIServer, make_server


@dataclass(frozen=True)
class DemoUser:
    """A person the dev IdP can sign in as."""

    sub: str
    email: str
    name: str
    groups: tuple[str, ...]
    amr: tuple[str, ...] = ("pwd", "mfa")
    blurb: str = ""


DEMO_USERS = (
    DemoUser("erin", "erin@example.com", "Erin Engineer", ("developers",), blurb="staff engineer"),
    DemoUser("sam", "sam@example.com", "Sam SRE", ("sre",), blurb="SRE; prod-admin needs approval"),
    DemoUser(
        "sec",
        "sec@example.com",
        "Sasha Security",
        ("security", "security-admins"),
        blurb="approver and broker admin",
    ),
    DemoUser(
        "dana",
        "dana@contractor.example",
        "Dana Contractor",
        ("contractors",),
        blurb="contractor until 2026-12-31",
    ),
    DemoUser("audrey", "audrey@example.com", "Audrey Auditor", ("compliance",), blurb="auditor"),
)


@dataclass
class _Client:
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...] = ()


@dataclass
class DevIdentityProvider:
    """The dev IdP: a Flask app served on loopback in a thread."""

    users: tuple[DemoUser, ...] = DEMO_USERS
    clients: dict[str, _Client] = field(default_factory=dict)
    issuer: str = ""
    _key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, private=True))
    _codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    _access: dict[str, DemoUser] = field(default_factory=dict)
    _server: BaseWSGIServer | None = None

    def register_client(
        self, client_id: str, redirect_uris: tuple[str, ...], logout_uris: tuple[str, ...] = ()
    ) -> str:
        """Register a confidential client; return its secret."""
        secret = secrets.token_urlsafe(24)
        self.clients[client_id] = _Client(client_id, secret, redirect_uris, logout_uris)
        return secret

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a background thread; return the issuer URL."""
        self._server = make_server(host, port, self.app(), threaded=True)
        self.issuer = f"http://{host}:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.issuer

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def app(self) -> Flask:
        """The provider's WSGI app."""
        app = Flask("broker-dev-idp")
        app.add_url_rule("/.well-known/openid-configuration", view_func=self._discovery)
        app.add_url_rule("/jwks", view_func=self._jwks)
        app.add_url_rule("/authorize", view_func=self._authorize, methods=["GET", "POST"])
        app.add_url_rule("/token", view_func=self._token, methods=["POST"])
        app.add_url_rule("/userinfo", view_func=self._userinfo)
        app.add_url_rule("/logout", view_func=self._logout)
        return app

    def _discovery(self) -> Response:
        return jsonify(
            issuer=self.issuer,
            authorization_endpoint=f"{self.issuer}/authorize",
            token_endpoint=f"{self.issuer}/token",
            userinfo_endpoint=f"{self.issuer}/userinfo",
            jwks_uri=f"{self.issuer}/jwks",
            end_session_endpoint=f"{self.issuer}/logout",
            response_types_supported=["code"],
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
            code_challenge_methods_supported=["S256"],
            scopes_supported=["openid", "email", "profile", "groups"],
            token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
        )

    def _jwks(self) -> Response:
        public = self._key.as_dict(private=False)
        public["kid"] = self._key.thumbprint()
        public["use"] = "sig"
        public["alg"] = "RS256"
        return jsonify(keys=[public])

    def _authorize(self) -> ResponseReturnValue:
        params = request.values
        client = self.clients.get(params.get("client_id", ""))
        redirect_uri = params.get("redirect_uri", "")
        if client is None or redirect_uri not in client.redirect_uris:
            abort(400, "unknown client or redirect_uri")
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return redirect(_with(redirect_uri, error="invalid_request", state=params.get("state")))
        if request.method == "GET":
            return self._picker(params)
        user = next((u for u in self.users if u.sub == params.get("user")), None)
        if user is None:
            abort(400, "pick a demo user")
        code = secrets.token_urlsafe(24)
        self._codes[code] = {
            "client_id": client.client_id,
            "redirect_uri": redirect_uri,
            "user": user,
            "nonce": params.get("nonce"),
            "challenge": params["code_challenge"],
            "expires": time.time() + 60,
        }
        return redirect(_with(redirect_uri, code=code, state=params.get("state"), iss=self.issuer))

    def _picker(self, params: Any) -> str:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k != "user"
        )
        buttons = "".join(
            f'<p><button name="user" value="{html.escape(u.sub)}">{html.escape(u.name)}</button> '
            f"{html.escape(u.email)} — {html.escape(u.blurb)}; groups: "
            f"{html.escape(', '.join(u.groups))}</p>"
            for u in self.users
        )
        return (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<title>Dev identity provider</title></head><body><main>"
            "<h1>Development identity provider</h1>"
            "<p><strong>Insecure, for <code>broker dev</code> only.</strong> Sign in as:</p>"
            f'<form method="post" action="/authorize">{hidden}{buttons}</form></main></body></html>'
        )

    def _token(self) -> tuple[Response, int] | Response:
        form = request.form
        client_id, client_secret = _client_credentials()
        client = self.clients.get(client_id)
        if client is None or not secrets.compare_digest(client.client_secret, client_secret):
            return jsonify(error="invalid_client"), 401
        grant = self._codes.pop(form.get("code", ""), None)
        if grant is None or grant["expires"] < time.time() or grant["client_id"] != client_id:
            return jsonify(error="invalid_grant"), 400
        if grant["redirect_uri"] != form.get("redirect_uri"):
            return jsonify(error="invalid_grant", error_description="redirect_uri"), 400
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["challenge"]:
            return jsonify(error="invalid_grant", error_description="PKCE"), 400
        user: DemoUser = grant["user"]
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": client_id,
            "sub": user.sub,
            "iat": now,
            "exp": now + 600,
            "auth_time": now,
            "nonce": grant["nonce"],
            "amr": list(user.amr),
            **_profile(user),
        }
        header = {"alg": "RS256", "kid": self._key.thumbprint()}
        access = secrets.token_urlsafe(24)
        self._access[access] = user
        return jsonify(
            id_token=jwt.encode(header, claims, self._key),
            access_token=access,
            token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
            expires_in=600,
        )

    def _userinfo(self) -> tuple[Response, int] | Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        user = self._access.get(token)
        if user is None:
            return jsonify(error="invalid_token"), 401
        return jsonify(sub=user.sub, **_profile(user))

    def _logout(self) -> ResponseReturnValue:
        target = request.args.get("post_logout_redirect_uri", "")
        allowed = {u for c in self.clients.values() for u in c.post_logout_redirect_uris}
        if target in allowed:
            return redirect(target)
        return "<!doctype html><title>Signed out</title><p>Signed out of the dev IdP.</p>"


def _profile(user: DemoUser) -> dict[str, Any]:
    return {
        "email": user.email,
        "email_verified": True,
        "name": user.name,
        "groups": list(user.groups),
    }


def _client_credentials() -> tuple[str, str]:
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        return auth.username or "", auth.password or ""
    return request.form.get("client_id", ""), request.form.get("client_secret", "")


def _with(url: str, **params: str | None) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{url}{'&' if '?' in url else '?'}{query}"
