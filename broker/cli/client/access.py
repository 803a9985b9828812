"""`broker roles` and `broker request`: what you may use, and asking for it."""

from __future__ import annotations

import json
from typing import Any

import click

from broker.cli.client.errors import ApiError
from broker.cli.client.options import format_option
from broker.cli.client.state import ClientState, pass_state


def _access(entry: dict[str, Any]) -> str:
    verdict = entry.get("verdict")
    if verdict == "allow":
        return "yes"
    if verdict == "approval":
        return "approval"
    return "no"


@click.command("roles")
@click.option("--all", "show_all", is_flag=True, help="Also list entitlements you may not use.")
@format_option
@pass_state
def roles(state: ClientState, show_all: bool, output_format: str) -> None:
    """List the entitlements you may use (and, with --all, why not the others)."""
    client, _ = state.signed_in()
    entries = client.api("GET", "/entitlements").body.get("entitlements", [])
    shown = [e for e in entries if show_all or e.get("verdict") in ("allow", "approval")]
    if output_format == "json":
        click.echo(json.dumps({"entitlements": shown}, indent=2))
        return
    if not shown:
        click.echo("You may not use any entitlement. `broker roles --all` shows why.")
        return
    width = max(len("ENTITLEMENT"), *(len(str(e.get("id"))) for e in shown))
    click.echo(f"{'ENTITLEMENT':<{width}}  ACCESS    MAX     REGION          DETAILS")
    for entry in shown:
        detail = entry.get("description") or ""
        if entry.get("verdict") == "deny":
            detail = (entry.get("reasons") or [""])[0]
        elif entry.get("verdict") == "approval":
            detail = f"needs approval (`broker request {entry.get('id')}`). {detail}".strip()
        max_duration = entry.get("max_duration") or "-"
        region = entry.get("region") or "-"
        click.echo(
            f"{entry.get('id')!s:<{width}}  {_access(entry):<8}  {max_duration:<6}  "
            f"{region:<14}  {detail}".rstrip()
        )


@click.command("request")
@click.argument("entitlement")
@click.option("--reason", help="Why you need it (some entitlements require one).")
@click.option("--duration", help="How long you need it, e.g. 1h or 30m.")
@pass_state
def request(state: ClientState, entitlement: str, reason: str | None, duration: str | None) -> None:
    """Request ENTITLEMENT: granted at once, or pending until an approver agrees."""
    client, _ = state.signed_in()
    body: dict[str, Any] = {"entitlement": entitlement}
    if reason:
        body["reason"] = reason
    if duration:
        body["duration"] = duration
    try:
        answer = client.api("POST", "/grants", body)
    except ApiError as exc:
        raise state.explain_refusal(client, entitlement, exc) from exc
    grant = answer.body.get("grant", {})
    if answer.status == 201:
        click.echo(
            f"active: {entitlement} is granted until {grant.get('expires_at')} "
            f"(grant {grant.get('id')})."
        )
        click.echo(f"Next: `broker creds {entitlement}` or `broker exec {entitlement} -- ...`.")
    else:
        click.echo(f"pending: {entitlement} is waiting for an approver (grant {grant.get('id')}).")
        click.echo(f"Once approved, `broker creds {entitlement}` will work.")
