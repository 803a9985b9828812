"""Shared state of the engineer's commands, passed through `ctx.obj` (click's repo.py pattern).

Tests hand `CliRunner.invoke(..., obj=ClientState(...))` a store, HTTP session, clock and
sleep of their own; a normal run builds the defaults on first use.
"""

from __future__ import annotations

import os
import sys
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import click
import requests

from broker.cli.client.cache import AwsCredentials
from broker.cli.client.errors import ApiError, ClientError, NotSignedIn
from broker.cli.client.http import BrokerClient, normalize_url
from broker.cli.client.store import SignIn, Store

URL_ENV = "BROKER_URL"


def _now() -> datetime:
    return datetime.now(UTC)


def can_open_browser() -> bool:
    """True where a browser can plausibly open: a desktop OS, a display, or $BROWSER."""
    if os.environ.get("BROWSER"):
        return True
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_browser(url: str) -> bool:
    """Open `url` in a browser when one is around; False when not (nothing is printed)."""
    if not can_open_browser():
        return False
    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


@dataclass
class ClientState:
    """The saved sign-in, the HTTP session, and the clock the commands share."""

    store: Store | None = None
    session: requests.Session | None = None
    clock: Callable[[], datetime] = _now
    sleep: Callable[[float], None] = time.sleep
    browser: Callable[[str], bool] = open_browser
    _http: requests.Session | None = field(default=None, repr=False)

    def get_store(self) -> Store:
        """The store (built from the environment on first use)."""
        if self.store is None:
            self.store = Store.default()
        return self.store

    def http(self) -> requests.Session:
        """One HTTP session for the whole command (connection reuse)."""
        if self.session is None:
            self.session = requests.Session()
        return self.session

    def broker_url(self, override: str | None = None) -> str:
        """`--url`, else $BROKER_URL, else the URL of the last `broker login`."""
        url = override or os.environ.get(URL_ENV) or self.get_store().saved_url()
        if not url:
            raise NotSignedIn(
                "No broker address is known on this machine.",
                hint="Sign in once with `broker login --url https://broker.example.com`.",
            )
        return normalize_url(url)

    def anonymous(self, url: str) -> BrokerClient:
        """A client for `url` without a token (the device flow)."""
        return BrokerClient(url, session=self.http())

    def signed_in(self) -> tuple[BrokerClient, SignIn]:
        """A client carrying the saved token; NotSignedIn when there is none or it expired."""
        url = self.broker_url()
        sign_in = self.get_store().sign_in(url)
        if sign_in is None:
            raise NotSignedIn(
                f"You are not signed in to {url}.", hint="Run `broker login` to sign in."
            )
        if sign_in.expires_at is not None and sign_in.expired(self.clock()):
            raise NotSignedIn(
                f"Your broker sign-in expired at {sign_in.expires_at:%Y-%m-%d %H:%M UTC}.",
                hint="Run `broker login` to sign in again.",
            )
        return BrokerClient(url, sign_in.token, session=self.http()), sign_in

    def issue(
        self, entitlement: str, *, duration: str | None, reason: str | None
    ) -> tuple[AwsCredentials, dict[str, Any]]:
        """Ask the broker for credentials; explain approval and policy refusals."""
        client, _ = self.signed_in()
        body: dict[str, Any] = {"entitlement": entitlement}
        if duration:
            body["duration"] = duration
        if reason:
            body["reason"] = reason
        try:
            answer = client.api("POST", "/credentials", body)
        except ApiError as exc:
            if exc.code == "approval_required":
                raise ClientError(
                    f"{entitlement} needs an approved request first: {exc.message}",
                    hint=f'Ask with `broker request {entitlement} --reason "..."`; once an '
                    "approver agrees, run this again.",
                    code=exc.code,
                ) from exc
            raise
        try:
            return AwsCredentials.from_api(answer.body["credentials"]), answer.body
        except (KeyError, TypeError, ValueError) as exc:
            raise ClientError(
                "The broker's answer did not hold credentials.",
                hint="Tell the platform team; nothing was written.",
            ) from exc


pass_state = click.make_pass_decorator(ClientState, ensure=True)
