"""Browser tests: Debian's Chromium (Playwright) against the broker served on loopback, the real
`oidc-provider` as identity provider, moto as AWS, and a stub AWS federation endpoint.

One HTTP server, identity provider and browser serve the whole run; each test gets a fresh
database (SQLite and PostgreSQL), moto roles, policy and app, swapped in behind the server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from apibed import bed_setup
from browserbed import Site
from oidc_provider import OidcProvider, node_modules_present
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from broker import create_app
from broker.db import Database

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
CLIENT_ID = "broker"
CLIENT_SECRET = "broker-browser-secret"
USERS = [
    {"sub": "dev", "email": "dev@example.com", "name": "Dev", "groups": ["developers"]},
    {"sub": "sam", "email": "sam@example.com", "name": "Sam", "groups": ["sre", "developers"]},
    {"sub": "sec", "email": "sec@example.com", "name": "Sec", "groups": ["security"]},
    {
        "sub": "ada",
        "email": "ada@example.com",
        "name": "Ada",
        "groups": ["security-admins", "compliance"],
    },
]
# Provider shapes (docs/identity-providers.md): Keycloak puts roles in realm_access.roles and
# no groups claim; Entra sends group object ids plus app roles, or an overage pointer instead.
ENTRA_GROUP = "7f1c5c2a-31b4-4d2e-9f55-0c2f1f4d8a11"
USERS += [
    {
        "sub": "kc",
        "email": "kc@example.com",
        "name": "Kay Cloak",
        "groups": None,
        "realm_access": {"roles": ["developers", "offline_access"]},
    },
    {
        "sub": "entra",
        "email": "en@example.com",
        "name": "En Tra",
        "groups": [ENTRA_GROUP],
        "roles": ["developers"],
    },
    {
        "sub": "entra-big",
        "email": "big@example.com",
        "name": "Big Tenant",
        "groups": None,
        "_claim_names": {"groups": "src1"},
        "_claim_sources": {
            "src1": {"endpoint": "https://graph.microsoft.com/v1.0/me/getMemberObjects"}
        },
    },
]
for _user in USERS:
    _user.update(amr=["pwd", "mfa"], acr="urn:broker:test:mfa")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.browser)


class _Swap:
    """The WSGI app behind the shared server; each test swaps its own app in."""

    def __init__(self) -> None:
        self.app: Callable[..., Any] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.app is None:
            return Response("no app", status=503)(environ, start_response)
        return self.app(environ, start_response)


class _Loopback:
    """A werkzeug server on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Federation:
    """A stub of AWS's federation endpoint: getSigninToken answers, login shows a page."""

    requests: list[dict[str, list[str]]] = field(default_factory=list)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append({k: request.args.getlist(k) for k in request.args})
        if request.args.get("Action") == "getSigninToken":
            body = Response(json.dumps({"SigninToken": "stub-token"}), mimetype="text/json")
        else:
            body = Response("<h1>AWS console (stub)</h1>", mimetype="text/html")
        return body(environ, start_response)


@pytest.fixture(scope="session")
def swap() -> _Swap:
    return _Swap()


@pytest.fixture(scope="session")
def broker_url(swap: _Swap) -> Iterator[str]:
    server = _Loopback(swap)
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def federation() -> Iterator[tuple[str, Federation]]:
    stub = Federation()
    server = _Loopback(stub)
    yield f"{server.url}/federation", stub
    server.stop()


@pytest.fixture(scope="session")
def idp(broker_url: str) -> Iterator[OidcProvider]:
    if not node_modules_present():
        pytest.skip("run `npm ci` in tests/node for the OIDC test provider")
    clients = [
        {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [f"{broker_url}/auth/callback"],
            "post_logout_redirect_uris": [f"{broker_url}/signed-out"],
        }
    ]
    with OidcProvider(clients=clients, users=USERS) as provider:
        yield provider


@pytest.fixture
def site_config() -> dict[str, Any]:
    """Extra broker settings for a test module's site (override the fixture to set some)."""
    return {}


@pytest.fixture
def site(
    site_config: dict[str, Any],
    database: Database,
    moto_server: Any,
    tmp_path: Path,
    swap: _Swap,
    broker_url: str,
    idp: OidcProvider,
    chromium: Any,
    federation: tuple[str, Federation],
) -> Iterator[Site]:
    roles, _policy_dir, base = bed_setup(database.url, moto_server, tmp_path)
    endpoint, stub = federation
    app = create_app(
        {
            **base,
            "BASE_URL": broker_url,
            "OIDC_ISSUER": idp.issuer,
            "OIDC_CLIENT_ID": CLIENT_ID,
            "OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "FEDERATION_ENDPOINT": endpoint,
            **site_config,
        }
    )
    swap.app = app
    built = Site(broker_url, idp, chromium, moto_server, roles, stub, app=app)
    yield built
    built.close()
    swap.app = None
    app.extensions["broker.db"].dispose()
    assert built.problems == [], built.problems  # no CSP violations, no script errors
