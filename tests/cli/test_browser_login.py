"""`broker login` end to end: a real browser signs in at the real IdP and approves the code."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clibed import Workspace, broker_app
from liveserver import Dispatch, serve
from oidc_provider import OidcProvider, node_modules_present

from broker.db import Database

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not node_modules_present(), reason="run `npm ci` in tests/node"),
]
USERS = [
    {
        "sub": "dev",
        "email": "dev@example.com",
        "name": "Dev",
        "groups": ["developers"],
        "amr": ["pwd", "mfa"],
    }
]


@pytest.fixture
def web_broker(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[str]:
    """The broker over HTTP with web sign-in at a real oidc-provider."""
    dispatch = Dispatch()
    server, thread = serve(dispatch)
    url = f"http://127.0.0.1:{server.server_port}"
    clients = [
        {
            "client_id": "broker",
            "client_secret": "broker-test-secret",
            "redirect_uris": [f"{url}/auth/callback"],
            "post_logout_redirect_uris": [f"{url}/signed-out"],
        }
    ]
    with OidcProvider(clients=clients, users=USERS) as idp:
        app, _ = broker_app(
            database,
            moto_server,
            tmp_path,
            BASE_URL=url,
            OIDC_ISSUER=idp.issuer,
            OIDC_CLIENT_ID="broker",
            OIDC_CLIENT_SECRET="broker-test-secret",
        )
        dispatch.app = app
        try:
            yield url
        finally:
            server.shutdown()
            thread.join(timeout=10)
            app.extensions["broker.db"].dispose()


def test_device_login_approved_in_chromium(
    web_broker: str, workspace: Workspace, chromium: Any
) -> None:
    login = subprocess.Popen(
        [workspace.broker, "login", "--url", web_broker],
        env=workspace.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert login.stdout is not None
        complete = ""
        deadline = time.monotonic() + 30
        printed = ""
        while not complete and time.monotonic() < deadline:
            line = login.stdout.readline()
            printed += line
            found = re.search(r"\(or open (\S+)\)", line)
            complete = found.group(1) if found else ""
        assert complete.startswith(f"{web_broker}/device?user_code="), printed
        code = complete.rsplit("=", 1)[1]
        assert f"    {code}" in printed

        context = chromium.new_context()
        try:
            page = context.new_page()
            page.goto(complete)
            # Not signed in at the broker yet: its sign-in sends us to the IdP's login form.
            page.wait_for_selector("input[name=login]")
            page.fill("input[name=login]", "dev")
            page.fill("input[name=password]", "any")
            page.click("button[type=submit]")
            page.wait_for_selector("#device-approve")
            assert page.url.startswith(f"{web_broker}/device?user_code=")
            assert page.inner_text("#device-user-code") == code
            assert page.inner_text("#device-ip") == "127.0.0.1"
            page.click("#device-approve")
            page.wait_for_selector("#device-result")
            assert page.inner_text("#device-result") == "Approved"
        finally:
            context.close()

        out, err = login.communicate(timeout=60)
        assert login.returncode == 0, err
        assert "Signed in to" in out and "dev@example.com" in out
    finally:
        if login.poll() is None:
            login.kill()
            login.communicate()

    who = subprocess.run(
        [workspace.broker, "whoami"],
        env=workspace.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert who.returncode == 0, who.stderr
    assert "dev@example.com" in who.stdout and "developers" in who.stdout
