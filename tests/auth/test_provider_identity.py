"""One person, one identity — against the real `oidc-provider`, the broker over HTTP and moto.

What is attacked here is what is *missing* or *changes*: a sign-in link with scopes removed, a
provider that does not vouch for the email, a person whose email or groups change at the
provider, one person holding a web session, a device token, a minted token and an ID token.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests
import sqlalchemy as sa
from apibed import bed_setup, write_policy
from click.testing import CliRunner
from liveserver import Dispatch, serve
from oidc_provider import OidcProvider, node_modules_present
from schedbed import role_policies, session_context, simulate_sessions

from broker import create_app
from broker.audit import verify_database
from broker.auth.cli import token_cli
from broker.db import Database, get_database
from broker.grants import RequestMeta
from broker.models import AuditEvent, IssuedSession, Principal, Revocation, utcnow
from broker.revocation import POLICY_NAME
from broker.scheduler import Scheduler
from broker.services import grant_service

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not node_modules_present(), reason="run `npm ci` in tests/node"),
]
SECRET = "broker-test-secret"
# The freshness bound the tests run with, and a wait that surely passes it (a loaded CI host
# must not make a fresh sign-in look stale before its first request).
CLAIMS_MAX_AGE = 5
PAST_THE_BOUND = CLAIMS_MAX_AGE + 1.0
USERS = [
    {"sub": "u-dev", "email": "dev@example.com", "groups": ["developers"], "amr": ["pwd", "mfa"]},
    {
        "sub": "u-cora",
        "email": "cora@contractor.example",
        "groups": ["developers", "sre"],
        "amr": ["pwd", "mfa"],
    },
    {"sub": "u-sam", "email": "sam@example.com", "groups": ["sre", "security"], "amr": ["mfa"]},
    {"sub": "u-sec", "email": "sec@example.com", "groups": ["security-admins"], "amr": ["mfa"]},
    {"sub": "u-una", "email": "una@example.com", "groups": ["developers"], "email_verified": False},
]


@dataclass
class World:
    """The broker over HTTP, signing in at a real provider, over moto roles."""

    url: str
    idp: OidcProvider
    app: Any
    roles: dict[str, str]
    moto: Any

    def sign_in(self, user: str, *, scope: str | None = None) -> tuple[requests.Session, Any]:
        """Sign `user` in through the browser flow (no browser needed); return the cookie jar
        and the broker's answer to the callback. `scope` replaces the link's scope, as an
        attacker editing the URL would."""
        browser = requests.Session()
        start = browser.get(f"{self.url}/login", allow_redirects=False, timeout=10)
        assert start.status_code == 302, start.text
        link = start.headers["Location"]
        if scope is not None:
            parts = urlsplit(link)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            query["scope"] = scope
            link = urlunsplit(parts._replace(query=urlencode(query)))
        back = self.idp.complete_login(link, user, redirect_prefix=f"{self.url}/auth/callback")
        return browser, browser.get(back, allow_redirects=False, timeout=10)

    def api(self, method: str, path: str, bearer: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method,
            f"{self.url}/api/v1{path}",
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=30,
            **kwargs,
        )

    def mint(self, *args: str) -> str:
        """`broker token mint ARGS` against this broker's database; the printed token."""
        result = CliRunner().invoke(token_cli, ["mint", *args], obj=None, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output.strip().splitlines()[-1]

    def principals(self, email: str) -> list[Principal]:
        with self.app.app_context(), get_database().session() as session:
            query = sa.select(Principal).where(sa.func.lower(Principal.email) == email)
            return list(session.scalars(query))

    def events(self, action: str) -> list[AuditEvent]:
        with self.app.app_context(), get_database().session() as session:
            query = sa.select(AuditEvent).where(AuditEvent.action == action)
            return list(session.scalars(query.order_by(AuditEvent.seq)))


@pytest.fixture
def world(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[World]:
    with running_world(database, moto_server, tmp_path) as built:
        yield built


@contextmanager
def running_world(
    database: Database, moto_server: Any, tmp_path: Path, ttl: dict[str, int] | None = None
) -> Iterator[World]:
    """The broker over HTTP at a real provider (`ttl` overrides the provider's token TTLs)."""
    dispatch = Dispatch()
    server, thread = serve(dispatch)
    url = f"http://127.0.0.1:{server.server_port}"
    clients = [
        {
            "client_id": "broker",
            "client_secret": SECRET,
            "redirect_uris": [f"{url}/auth/callback"],
            "post_logout_redirect_uris": [f"{url}/signed-out"],
        }
    ]
    with OidcProvider(clients=clients, users=[dict(u) for u in USERS], ttl=ttl) as idp:
        roles, policy_dir, base = bed_setup(database.url, moto_server, tmp_path)
        write_policy(policy_dir, roles, utcnow() - timedelta(days=1))  # cora's engagement ended
        app = create_app(
            {
                **base,
                "BASE_URL": url,
                "OIDC_ISSUER": idp.issuer,
                "OIDC_CLIENT_ID": "broker",
                "OIDC_CLIENT_SECRET": SECRET,
                "CLAIMS_MAX_AGE_SECONDS": CLAIMS_MAX_AGE,
            }
        )
        dispatch.app = app
        try:
            yield World(url, idp, app, roles, moto_server)
        finally:
            server.shutdown()
            thread.join(5)
            app.extensions["broker.db"].dispose()


@pytest.fixture
def mint_in(world: World) -> Iterator[None]:
    """`broker token mint` runs inside the world's app context."""
    with world.app.app_context():
        yield


def _refused(response: Any, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert "broker_session" not in response.headers.get("Set-Cookie", "")


# -- what is missing -------------------------------------------------------------------------


def test_dropping_the_email_scope_is_refused_not_matched_by_sub(world: World) -> None:
    _, answer = world.sign_in("u-cora", scope="openid profile groups")
    _refused(answer, "scope_not_granted")
    [failed] = world.events("auth.sign_in_failed")
    assert failed.details["code"] == "scope_not_granted"
    assert world.principals("cora@contractor.example") == []
    # the same token used as an API bearer: no email means no person, never `sub` as the email
    id_token = world.idp.login("u-cora", scope="openid profile groups")["id_token"]
    refused = world.api("GET", "/me", id_token)
    assert refused.status_code == 401 and refused.json()["code"] == "claims_refused"
    assert "email" in refused.json()["message"]
    assert world.events("auth.sign_in_failed")[-1].details["code"] == "missing_email"


def test_dropping_the_groups_scope_is_refused(world: World) -> None:
    _, answer = world.sign_in("u-dev", scope="openid email profile")
    _refused(answer, "scope_not_granted")
    id_token = world.idp.login("u-dev", scope="openid email profile")["id_token"]
    refused = world.api("GET", "/entitlements", id_token)
    assert refused.status_code == 401 and "groups" in refused.json()["message"]


def test_provider_that_does_not_vouch_for_the_email_is_refused(world: World) -> None:
    _, answer = world.sign_in("u-una")
    _refused(answer, "email_not_verified")
    assert world.events("auth.sign_in_failed")[-1].details["code"] == "email_not_verified"
    world.idp.set_user("u-una", email_verified="absent")  # a provider that never sends it
    _, again = world.sign_in("u-una")
    _refused(again, "email_not_verified")
    assert world.principals("una@example.com") == []


def test_device_flow_cannot_be_approved_by_a_stripped_sign_in(world: World) -> None:
    start = requests.post(
        f"{world.url}/oauth/device_authorization", data={"client_id": "broker-cli"}, timeout=10
    ).json()
    browser, answer = world.sign_in("u-cora", scope="openid profile groups")
    _refused(answer, "scope_not_granted")
    page = browser.get(
        f"{world.url}/device", params={"user_code": start["user_code"]}, allow_redirects=False
    )
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    poll = requests.post(
        f"{world.url}/oauth/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": start["device_code"],
            "client_id": "broker-cli",
        },
        timeout=10,
    )
    assert poll.json()["error"] == "authorization_pending"


def test_contractor_past_valid_until_gets_nothing_by_any_path(world: World, mint_in: None) -> None:
    browser, answer = world.sign_in("u-cora")
    assert answer.status_code == 302  # signing in is allowed; being given anything is not
    assert browser.get(f"{world.url}/", timeout=10).status_code == 200
    id_token = world.idp.login("u-cora")["id_token"]
    minted = world.mint("--email", "cora@contractor.example")
    for bearer in (id_token, minted):
        me = world.api("GET", "/me", bearer).json()
        assert me["kind"] == "contractor"
        allowed = world.api("GET", "/entitlements", bearer).json()
        assert [e for e in allowed["entitlements"] if e["allowed"]] == []
        for entitlement in ("app-read", "prod-read", "app-admin"):
            issued = world.api("POST", "/credentials", bearer, json={"entitlement": entitlement})
            assert issued.status_code == 403, issued.text
    assert len(world.principals("cora@contractor.example")) == 1
    with world.app.app_context(), get_database().session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(IssuedSession)) == 0


# -- one person, one principal -----------------------------------------------------------------


def test_every_way_in_is_one_principal_and_none_approves_its_own_request(
    world: World, mint_in: None
) -> None:
    browser, answer = world.sign_in("u-sam")
    assert answer.status_code == 302
    id_token = world.idp.login("u-sam")["id_token"]
    minted = world.mint("--email", "sam@example.com")
    [sam] = world.principals("sam@example.com")
    assert (sam.issuer, sam.subject) == (world.idp.issuer, "u-sam")
    assert [p.id for p in world.principals("sam@example.com")] == [sam.id]
    # a second row for the same person cannot be made by minting
    created = CliRunner().invoke(token_cli, ["mint", "--email", "sam@example.com", "--create"])
    assert created.exit_code != 0 and "already exists" in created.output
    unknown = CliRunner().invoke(token_cli, ["mint", "--email", "nobody@example.com"])
    assert unknown.exit_code != 0 and "Nobody with email" in unknown.output
    request = world.api(
        "POST", "/grants", minted, json={"entitlement": "app-admin", "reason": "incident 7"}
    )
    assert request.status_code == 202, request.text
    grant_id = request.json()["grant"]["id"]
    for bearer in (id_token, minted):
        own = world.api("POST", f"/grants/{grant_id}/approve", bearer, json={})
        assert own.status_code == 403 and "your own" in own.json()["message"]
    listed = world.api("GET", "/approvals", id_token).json()
    assert grant_id not in [g["id"] for g in listed["grants"]]
    page = browser.get(f"{world.url}/approvals", timeout=10).text  # the web session: same person
    assert f"/approvals/{grant_id}/approve" not in page
    assert "Your own requests" in page and grant_id in page


def test_cut_off_stops_every_session_and_token_of_the_person(world: World, mint_in: None) -> None:
    browser, _ = world.sign_in("u-dev")
    assert browser.get(f"{world.url}/", timeout=10).status_code == 200
    id_token = world.idp.login("u-dev")["id_token"]
    minted = world.mint("--email", "dev@example.com")
    issued = world.api("POST", "/credentials", minted, json={"entitlement": "app-read"})
    assert issued.status_code == 201, issued.text
    _, _ = world.sign_in("u-sec")
    [dev] = world.principals("dev@example.com")
    with world.app.test_request_context():
        service = grant_service()
        admin = service.caller_for(world.principals("sec@example.com")[0].id, {}, RequestMeta())
        service.cut_off(admin, dev.id, reason="left the company", meta=RequestMeta())
    assert world.api("GET", "/me", minted).status_code == 401
    assert world.api("GET", "/me", id_token).status_code == 403
    page = browser.get(f"{world.url}/", allow_redirects=False, timeout=10)
    assert page.status_code in (302, 403)
    assert browser.get(f"{world.url}/", allow_redirects=False, timeout=10).status_code == 302
    _, again = world.sign_in("u-dev")
    assert again.status_code == 403


# -- what changes ------------------------------------------------------------------------------


def test_email_change_at_the_provider_does_not_move_what_aws_sees(
    world: World, mint_in: None
) -> None:
    world.sign_in("u-dev")
    minted = world.mint("--email", "dev@example.com")
    issued = world.api("POST", "/credentials", minted, json={"entitlement": "app-read"}).json()
    source_identity = issued["source_identity"]
    assert source_identity.startswith("p-") and "dev" not in source_identity
    world.idp.set_user("u-dev", email="dev.new@example.com")
    time.sleep(PAST_THE_BOUND)  # the next request asks the provider again
    me = world.api("GET", "/me", minted).json()
    assert me["email"] == "dev.new@example.com" and me["source_identity"] == source_identity
    [change] = world.events("principal.email_change")
    assert change.details["previous_email"] == "dev@example.com"
    # The person is cut off after the change: the deny covers the session issued before it.
    [dev] = world.principals("dev.new@example.com")
    world.sign_in("u-sec")
    with world.app.test_request_context():
        service = grant_service()
        admin = service.caller_for(world.principals("sec@example.com")[0].id, {}, RequestMeta())
        service.cut_off(admin, dev.id, reason="compromised", meta=RequestMeta())
    Scheduler(world.app).sweep()
    role = world.roles["read"]
    doc = role_policies(world.moto.client("iam"), role)[POLICY_NAME]
    assert source_identity in str(doc) and "dev.new@example.com" not in str(doc)
    with world.app.app_context(), get_database().session() as session:
        row = session.get(IssuedSession, issued["session_id"])
        assert row is not None
        context = session_context(row.source_identity, row.issued_at, row.grant_id)
    assert simulate_sessions(world.moto.client("iam"), role, [context]) == ["ExplicitlyDenied"]
    # Reconcile settles: later sweeps queue nothing new.
    with world.app.app_context(), get_database().session() as session:
        before = session.scalar(sa.select(sa.func.count()).select_from(Revocation))
    Scheduler(world.app).sweep()
    Scheduler(world.app).sweep()
    with world.app.app_context(), get_database().session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Revocation)) == before
        assert verify_database(session).ok


def test_removal_from_a_group_at_the_provider_ends_access_within_the_bound(
    world: World, mint_in: None
) -> None:
    world.sign_in("u-dev")
    minted = world.mint("--email", "dev@example.com")
    first = world.api("POST", "/credentials", minted, json={"entitlement": "app-read"})
    assert first.status_code == 201, first.text
    world.idp.set_user("u-dev", groups=[])
    time.sleep(PAST_THE_BOUND)
    refused = world.api("POST", "/credentials", minted, json={"entitlement": "app-read"})
    assert refused.status_code == 403, refused.text
    assert world.api("GET", "/me", minted).json()["groups"] == []


def test_claims_that_cannot_be_refreshed_mean_signing_in_again(world: World) -> None:
    id_token = world.idp.login("u-dev")["id_token"]  # an API-only person: no tokens kept
    assert world.api("GET", "/me", id_token).status_code == 200
    time.sleep(PAST_THE_BOUND)
    stale = world.api("GET", "/me", id_token)
    assert stale.status_code == 401 and stale.json()["code"] == "stale_claims"
    assert "Sign in again" in stale.json()["hint"]


def test_claims_are_refreshed_with_the_refresh_token_once_the_access_token_expired(
    database: Database, moto_server: Any, tmp_path: Path
) -> None:
    # Access tokens that live 3 s: by the time claims are stale, only the refresh token works.
    with running_world(database, moto_server, tmp_path, ttl={"AccessToken": 3}) as world:
        with world.app.app_context():
            world.sign_in("u-dev")
            minted = world.mint("--email", "dev@example.com")
        world.idp.set_user("u-dev", groups=["developers", "sre"])
        time.sleep(PAST_THE_BOUND)
        me = world.api("GET", "/me", minted)
        assert me.status_code == 200, me.text
        assert me.json()["groups"] == ["developers", "sre"]
        world.idp.set_user("u-dev", email_verified=False)  # the provider withdraws its word
        time.sleep(PAST_THE_BOUND)
        refused = world.api("GET", "/me", minted)
        assert refused.status_code == 401 and refused.json()["code"] == "claims_refused"


def test_id_tokens_issued_before_sign_out_are_refused_as_bearers(world: World) -> None:
    browser, _ = world.sign_in("u-dev")
    id_token = world.idp.login("u-dev")["id_token"]
    assert world.api("GET", "/me", id_token).status_code == 200
    home = browser.get(f"{world.url}/", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', home)
    assert token is not None
    out = browser.post(
        f"{world.url}/logout", data={"csrf_token": token.group(1)}, allow_redirects=False
    )
    assert out.status_code in (302, 303)
    time.sleep(1.1)  # iat has one-second resolution: the next token is strictly later
    refused = world.api("GET", "/me", id_token)
    assert refused.status_code == 401 and "signed out" in refused.json()["message"]
    fresh = world.idp.login("u-dev")["id_token"]
    assert world.api("GET", "/me", fresh).status_code == 200


def test_web_session_ends_when_the_provider_withdraws_its_word(world: World) -> None:
    browser, _ = world.sign_in("u-dev")
    assert browser.get(f"{world.url}/", allow_redirects=False, timeout=10).status_code == 200
    world.idp.set_user("u-dev", email_verified=False)
    time.sleep(PAST_THE_BOUND)  # past the freshness bound: the next page asks the provider again
    page = browser.get(f"{world.url}/", allow_redirects=False, timeout=10)
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")
    again = browser.get(f"{world.url}/", allow_redirects=False, timeout=10)
    assert again.status_code == 302  # the session is over, not just this request
