"""`broker login`, `broker logout`, `broker whoami`: the CLI's sign-in (RFC 8628 device flow)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import click

from broker.cli.client.cache import CACHE_DIR, DirectoryCache
from broker.cli.client.errors import ClientError, Unreachable
from broker.cli.client.http import CLIENT_ID, DEVICE_GRANT, BrokerClient
from broker.cli.client.options import format_option
from broker.cli.client.state import ClientState, pass_state

SLOW_DOWN_STEP = 5
MAX_BACKOFF = 60


@click.command("login")
@click.option("--url", help="The broker's address (remembered for next time).")
@click.option("--no-browser", is_flag=True, help="Only print the address; do not open a browser.")
@pass_state
def login(state: ClientState, url: str | None, no_browser: bool) -> None:
    """Sign in to the broker: approve a code in your browser, then the CLI holds a token."""
    base = state.broker_url(url)
    client = state.anonymous(base)
    answer = client.oauth(
        "/oauth/device_authorization", {"client_id": CLIENT_ID, "scope": "broker"}
    )
    body = answer.body
    if answer.status != 200 or "device_code" not in body:
        raise ClientError(
            f"The broker refused to start a sign-in: {body.get('error_description') or body}",
            hint="Try again in a few minutes.",
        )
    complete = str(body.get("verification_uri_complete") or body["verification_uri"])
    click.echo(f"To sign in, open {body['verification_uri']} and enter the code:\n")
    click.echo(f"    {body['user_code']}\n")
    click.echo(f"(or open {complete})")
    if not no_browser and state.browser(complete):
        click.echo("A browser window was opened for you; check the code matches.")
    click.echo("Waiting for approval...", err=True)
    token, expires_in = _poll(state, client, body)
    authed = BrokerClient(base, token, session=state.http())
    me = authed.api("GET", "/me").body
    expires_at = state.clock() + timedelta(seconds=expires_in)
    where = state.get_store().save(base, token, email=me.get("email"), expires_at=expires_at)
    click.echo(
        f"Signed in to {base} as {me.get('email')} until {expires_at:%Y-%m-%d %H:%M UTC} "
        f"(token kept in {where})."
    )


def _poll(state: ClientState, client: BrokerClient, start: dict[str, object]) -> tuple[str, int]:
    """Poll the token endpoint as RFC 8628 §3.4-3.5 asks; return (token, lifetime seconds)."""
    interval = max(1, int(str(start.get("interval", 5))))
    deadline = time.monotonic() + int(str(start.get("expires_in", 600)))
    form = {
        "grant_type": DEVICE_GRANT,
        "device_code": str(start["device_code"]),
        "client_id": CLIENT_ID,
    }
    while True:
        state.sleep(interval)
        if time.monotonic() > deadline + interval:
            break
        try:
            answer = client.oauth("/oauth/token", form)
        except Unreachable:
            interval = min(interval * 2, MAX_BACKOFF)  # §3.5: back off on connection trouble
            continue
        if answer.status == 200 and answer.body.get("access_token"):
            return str(answer.body["access_token"]), int(str(answer.body.get("expires_in", 0)))
        error = str(answer.body.get("error", ""))
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_STEP
            continue
        if error == "access_denied":
            raise ClientError(
                "The sign-in was denied in the browser.",
                hint="If that was a mistake, run `broker login` again.",
            )
        if error == "expired_token":
            break
        raise ClientError(
            f"Sign-in failed: {answer.body.get('error_description') or error or answer.status}.",
            hint="Run `broker login` again.",
        )
    raise ClientError(
        "The code expired before anyone approved it.",
        hint="Run `broker login` again and approve the new code within a few minutes.",
    )


@click.command("logout")
@pass_state
def logout(state: ClientState) -> None:
    """Sign out: revoke the token at the broker and forget it on this machine."""
    url = state.broker_url()
    store = state.get_store()
    sign_in = store.sign_in(url)
    if sign_in is None:
        click.echo(f"Not signed in to {url}; nothing to do.")
        return
    revoked = True
    try:
        state.anonymous(url).oauth(
            "/oauth/revoke", {"token": sign_in.token, "client_id": CLIENT_ID}
        )
    except ClientError:
        revoked = False
    store.forget(url)
    DirectoryCache(store.directory / CACHE_DIR).forget_broker(url)
    if revoked:
        click.echo(f"Signed out of {url}.")
    else:
        click.echo(
            f"Forgot the token on this machine, but {url} could not be reached to revoke it; "
            "it stays valid until it expires.",
            err=True,
        )


@click.command("whoami")
@format_option
@pass_state
def whoami(state: ClientState, output_format: str) -> None:
    """Show who the broker thinks you are."""
    client, sign_in = state.signed_in()
    me = client.api("GET", "/me").body
    if output_format == "json":
        expires = sign_in.expires_at.isoformat() if sign_in.expires_at else None
        click.echo(
            json.dumps({**me, "broker": client.url, "sign_in_expires_at": expires}, indent=2)
        )
        return
    click.echo(f"{me.get('email')} ({me.get('kind')}) at {client.url}")
    groups = me.get("groups") or []
    click.echo(f"groups: {', '.join(groups) if groups else '(none)'}")
    if me.get("valid_until"):
        click.echo(f"access ends: {me['valid_until']}")
    if sign_in.expires_at is not None:
        click.echo(f"sign-in valid until: {sign_in.expires_at:%Y-%m-%d %H:%M UTC}")
