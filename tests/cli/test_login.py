"""`broker login / whoami / roles / request / logout` in-process against a live broker."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import keyring
import pytest
import requests
from aws import closed_port
from clibed import LiveBroker, Workspace
from click.testing import Result
from keyring.backend import KeyringBackend

from broker.cli.client.state import ClientState
from broker.cli.client.store import Store
from broker.grants import RequestMeta
from broker.models import utcnow
from broker.policy import Identity
from broker.services import grant_service
from broker.web.oauth import device_flow

Cli = Callable[..., Result]
CODE_RE = re.compile(r"^\s+([A-Z]{4}-[A-Z]{4})$", re.MULTILINE)


class MemoryKeyring(KeyringBackend):
    """A keyring that lives in this process (a real backend as far as `keyring` knows)."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.items.pop((service, username), None)


def approver(live: LiveBroker, seen: list[str]) -> Callable[[float], None]:
    """A `sleep` for the CLI's poll loop that approves the printed code on its first call,
    as the person would in the browser meanwhile."""

    def sleep(_seconds: float) -> None:
        if seen and seen[0] != "approved":
            app = live.bed.app
            identity = Identity(
                issuer="urn:test",
                subject="dev@example.com",
                email="dev@example.com",
                groups=frozenset({"developers"}),
                amr=("pwd", "mfa"),
            )
            with app.test_request_context():
                person = grant_service().sign_in(identity, RequestMeta(client="web"))
                device_flow().approve(seen[0], person, RequestMeta(client="web"))
            seen[0] = "approved"

    return sleep


def code_spy_session(seen: list[str]) -> requests.Session:
    """An HTTP session that notes each user code the broker hands out."""
    original = requests.Session.request

    def spy(self: requests.Session, method: str, url: str, **kwargs: Any) -> Any:
        response = original(self, method, url, **kwargs)
        if url.endswith("/oauth/device_authorization"):
            seen.append(response.json()["user_code"])
        return response

    session = requests.Session()
    session.request = spy.__get__(session)  # type: ignore[method-assign]
    return session


def run_login(cli: Cli, live: LiveBroker, workspace: Workspace, store: Store) -> Result:
    seen: list[str] = []
    state = ClientState(store=store, sleep=approver(live, seen), browser=lambda url: False)
    session = code_spy_session(seen)
    state.session = session
    return cli("login", "--url", live.url + "/", "--no-browser", state=state)


def test_login_stores_token_in_a_private_file_without_keyring(
    cli: Cli, live: LiveBroker, workspace: Workspace
) -> None:
    result = run_login(cli, live, workspace, workspace.store())
    assert result.exit_code == 0, result.output
    assert f"open {live.url}/device and enter the code" in result.output
    assert CODE_RE.search(result.output)
    assert "Signed in to" in result.output and "dev@example.com" in result.output
    token_file = workspace.config_dir / "token.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(workspace.config_dir.stat().st_mode) == 0o700
    token = json.loads(token_file.read_text())[live.url]
    assert token.startswith("brk_")
    assert json.loads((workspace.config_dir / "config.json").read_text())["url"] == live.url

    who = cli("whoami")
    assert who.exit_code == 0, who.output
    assert "dev@example.com (staff)" in who.output
    assert "developers" in who.output

    out = cli("logout")
    assert out.exit_code == 0 and "Signed out" in out.output
    assert not token_file.exists()
    # Revoked at the broker too, not just forgotten here.
    answer = requests.get(
        f"{live.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 401
    assert len(live.events("device.token.revoke")) == 1
    again = cli("whoami")
    assert again.exit_code == 3  # not signed in (docs/cli.md exit codes)
    assert "You are not signed in" in again.output and "broker login" in again.output


def test_login_uses_the_keyring_when_there_is_one(
    cli: Cli, live: LiveBroker, workspace: Workspace
) -> None:
    backend = MemoryKeyring()
    result = run_login(cli, live, workspace, Store(workspace.config_dir, backend))
    assert result.exit_code == 0, result.output
    assert "OS keyring" in result.output
    assert backend.items[("broker", live.url)].startswith("brk_")
    assert not (workspace.config_dir / "token.json").exists()
    assert "brk_" not in (workspace.config_dir / "config.json").read_text()


def test_fail_keyring_is_detected() -> None:
    from keyring.backends import fail

    from broker.cli.client.store import usable_keyring

    saved = keyring.get_keyring()
    try:
        keyring.set_keyring(fail.Keyring())
        assert usable_keyring() is None
        keyring.set_keyring(MemoryKeyring())
        assert isinstance(usable_keyring(), MemoryKeyring)
    finally:
        keyring.set_keyring(saved)


def test_login_denied_in_browser(cli: Cli, live: LiveBroker, workspace: Workspace) -> None:
    seen: list[str] = []

    def deny(_seconds: float) -> None:
        if seen and seen[0] != "done":
            with live.bed.app.test_request_context():
                identity = Identity(
                    issuer="urn:test", subject="dev@example.com", email="dev@example.com"
                )
                person = grant_service().sign_in(identity, RequestMeta())
                device_flow().deny(seen[0], person, RequestMeta())
            seen[0] = "done"

    session = code_spy_session(seen)
    state = ClientState(
        store=workspace.store(), sleep=deny, browser=lambda url: False, session=session
    )
    result = cli("login", "--url", live.url, state=state)
    assert result.exit_code == 1
    assert "denied in the browser" in result.output


def test_messages_with_next_steps(cli: Cli, live: LiveBroker, workspace: Workspace) -> None:
    nothing = cli("whoami")
    assert nothing.exit_code == 3
    assert "No broker address" in nothing.output and "broker login --url" in nothing.output

    token = live.bed.token("dev@example.com", ("developers",))
    workspace.store().save(
        live.url, token, email="dev@example.com", expires_at=utcnow() - timedelta(minutes=1)
    )
    expired = cli("whoami")
    assert expired.exit_code == 3
    assert "sign-in expired" in expired.output and "broker login" in expired.output

    workspace.store().save(
        live.url, "brk_revoked", email="x", expires_at=utcnow() + timedelta(hours=1)
    )
    invalid = cli("whoami")
    assert invalid.exit_code == 3
    assert "did not accept your sign-in" in invalid.output and "broker login" in invalid.output

    workspace.sign_in(live, "cora@contractor.example", ("developers",))
    denied = cli("creds", "prod-read")
    assert denied.exit_code == 4
    assert "Denied by policy" in denied.output
    assert "Contractors never get production access" in denied.output

    workspace.sign_in(live, "sam@example.com", ("sre",))
    pending = cli("creds", "app-admin", "--reason", "incident")
    assert pending.exit_code == 1  # a step is missing (a request), not a refusal
    assert (
        "needs an approved request" in pending.output
        and "broker request app-admin" in pending.output
    )
    requested = cli("request", "app-admin", "--reason", "incident 42", "--duration", "30m")
    assert requested.exit_code == 0, requested.output
    assert requested.output.startswith("pending:")

    workspace.sign_in(live)
    granted = cli("request", "app-read", "--duration", "1h")
    assert granted.exit_code == 0, granted.output
    assert granted.output.startswith("active:")

    listed = cli("roles", "--all")
    assert listed.exit_code == 0
    assert re.search(r"app-read\s+yes", listed.output)
    assert re.search(r"app-admin\s+no", listed.output)

    workspace.store().save(
        f"http://127.0.0.1:{closed_port()}",
        "brk_x",
        email="x",
        expires_at=utcnow() + timedelta(hours=1),
    )
    down = cli("whoami")
    assert down.exit_code == 5
    assert "Cannot reach the broker" in down.output and "network" in down.output


@pytest.mark.parametrize("url", ["ftp://broker", "http://broker.example.com"])
def test_login_refuses_unsafe_urls(cli: Cli, url: str) -> None:
    result = cli("login", "--url", url)
    assert result.exit_code == 1
    assert "not a broker URL" in result.output or "plain http" in result.output
