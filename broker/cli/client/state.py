"""Shared state of the engineer's commands, passed through `ctx.obj` (click's repo.py pattern).

Tests hand `CliRunner.invoke(..., obj=ClientState(...))` a store, HTTP session, clock and
sleep of their own; a normal run builds the defaults on first use.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from broker.cli.client import durations
from broker.cli.client.cache import AwsCredentials
from broker.cli.client.errors import ApiError, ClientError, NotSignedIn
from broker.cli.client.http import BrokerClient, normalize_url
from broker.cli.client.store import SignIn, Store

if TYPE_CHECKING:
    import requests

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
    import webbrowser

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
            import requests  # here, not at import: `broker --help` must start fast

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
        """Ask the broker for credentials; explain refusals, say when the duration was capped."""
        client, _ = self.signed_in()
        body: dict[str, Any] = {"entitlement": entitlement}
        if duration:
            body["duration"] = duration
        if reason:
            body["reason"] = reason
        asked_at = self.clock()
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
            raise self.explain_refusal(client, entitlement, exc) from exc
        try:
            credentials = AwsCredentials.from_api(
                {**answer.body["credentials"], "IssuedAt": asked_at.isoformat()}
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ClientError(
                "The broker's answer did not hold credentials.",
                hint="Tell the platform team; nothing was written.",
            ) from exc
        warn_if_capped(duration, answer.body.get("duration_seconds"))
        return credentials, answer.body

    def explain_refusal(self, client: BrokerClient, entitlement: str, exc: ApiError) -> ApiError:
        """The error to show: `exc`, or "no such entitlement" with the closest ids."""
        if exc.code != "policy_denied":
            return exc
        try:
            listed = client.api("GET", "/entitlements").body.get("entitlements", [])
        except ClientError:
            return exc
        ids = [str(e.get("id")) for e in listed if isinstance(e, dict)]
        return exc if entitlement in ids else no_such_entitlement(entitlement, ids)


def no_such_entitlement(entitlement: str, known: list[str]) -> ApiError:
    """The error for an entitlement id the broker does not know, with the closest known ids."""
    close = difflib.get_close_matches(entitlement, known, n=3, cutoff=0.6)
    suggestion = f"Did you mean {' or '.join(close)}? " if close else ""
    return ApiError(
        f"There is no entitlement {entitlement!r}.",
        hint=f"{suggestion}`broker roles` lists the ones you may use.",
        code="unknown_entitlement",
    )


def answer_region(body: dict[str, Any]) -> str | None:
    """The region the broker named in an answer (None from a broker that names none)."""
    region = body.get("region")
    return region if isinstance(region, str) and region else None


def warn_if_capped(asked: str | None, got: object) -> None:
    """On stderr: the broker issued noticeably less than `asked` (and what limits that)."""
    wanted = durations.seconds(asked) if asked else None
    if wanted is None or not isinstance(got, int) or got >= wanted - 60:
        return
    click.echo(
        f"Note: asked for {asked}, got {durations.short(got)}: the most the entitlement, the "
        "role and your grant allow now.",
        err=True,
    )


pass_state = click.make_pass_decorator(ClientState, ensure=True)
