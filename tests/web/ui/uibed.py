"""A page-test bed: the broker over moto roles, signing in through a stub issuer."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apibed import bed_setup
from flask import Flask
from flask.testing import FlaskClient
from webstubs import CLIENT_ID, CLIENT_SECRET, StubIssuer

from broker import create_app
from broker.db import Database

DEV = {"sub": "dev", "email": "dev@example.com", "groups": ["developers"]}
SRE = {"sub": "sam", "email": "sam@example.com", "groups": ["sre", "developers"]}
APPROVER = {"sub": "sec", "email": "sec@example.com", "groups": ["security", "sre"]}
ADMIN = {"sub": "ada", "email": "ada@example.com", "groups": ["security-admins", "compliance"]}

_CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Ui:
    """A broker app wired to the stub issuer, moto roles and a test policy."""

    app: Flask
    idp: StubIssuer
    moto: Any
    roles: dict[str, str]
    clients: list[FlaskClient] = field(default_factory=list)

    def browser(self) -> FlaskClient:
        """A fresh client: its own cookie jar, like a separate browser."""
        client = self.app.test_client()
        self.clients.append(client)
        return client

    def start_login(self, client: FlaskClient, next_path: str | None = None) -> str:
        """GET /login; return the authorization URL the broker redirected to."""
        query = {"next": next_path} if next_path is not None else {}
        response = client.get("/login", query_string=query)
        assert response.status_code == 302, response.get_data(as_text=True)
        location = response.headers["Location"]
        assert location.startswith(f"{self.idp.issuer}/authorize?")
        return location

    def sign_in(
        self,
        client: FlaskClient,
        user: dict[str, Any] = DEV,
        *,
        mint: Callable[[str], str] | None = None,
        next_path: str | None = None,
    ) -> Any:
        """Run the whole sign-in; return the callback's response."""
        location = self.start_login(client, next_path)
        if mint is None:

            def mint(nonce: str) -> str:
                return self.idp.sign(self.idp.claims(nonce, **user))

        params = self.idp.expect(location, mint)
        return client.get(
            "/auth/callback", query_string={"code": params["code"], "state": params["state"]}
        )

    def signed_in(self, user: dict[str, Any] = DEV) -> FlaskClient:
        """A client with a live session for `user`."""
        client = self.browser()
        response = self.sign_in(client, user)
        assert response.status_code == 302, response.get_data(as_text=True)
        return client


def csrf_of(html: str) -> str:
    """The CSRF token embedded in a page."""
    match = _CSRF_RE.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def make_ui(
    database: Database, moto_server: Any, stub_issuer: StubIssuer, tmp_path: Path, **extra: Any
) -> Ui:
    roles, _policy_dir, base = bed_setup(database.url, moto_server, tmp_path)
    config = {
        **base,
        "OIDC_ISSUER": stub_issuer.issuer,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "FEDERATION_ENDPOINT": f"{stub_issuer.issuer}/federation",
        **extra,
    }
    return Ui(create_app(config), stub_issuer, moto_server, roles)
