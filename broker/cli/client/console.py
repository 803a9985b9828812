"""`broker console`: open the AWS console as an entitlement's role.

Client-side: the CLI gets credentials from the broker, then calls the AWS federation
endpoint's `getSigninToken` itself (through `broker.console.console_url`), so the broker never
sees a console session.
"""

from __future__ import annotations

import click

from broker.cli.client.state import ClientState, pass_state

FEDERATION_ENDPOINT = "https://signin.aws.amazon.com/federation"
CONSOLE_DESTINATION = "https://console.aws.amazon.com/"


@click.command("console")
@click.argument("entitlement")
@click.option("--duration", help="How long the console session lasts (at least 15m), e.g. 1h.")
@click.option("--reason", help="Why you need it (recorded in the audit trail).")
@click.option("--print", "print_only", is_flag=True, help="Print the sign-in URL; do not open it.")
@click.option(
    "--federation-endpoint",
    envvar="BROKER_FEDERATION_ENDPOINT",
    default=FEDERATION_ENDPOINT,
    show_default=True,
    help="AWS federation endpoint (another partition, or a test double).",
)
@click.option("--destination", default=CONSOLE_DESTINATION, show_default=True)
@pass_state
def console(
    state: ClientState,
    entitlement: str,
    duration: str | None,
    reason: str | None,
    print_only: bool,
    federation_endpoint: str,
    destination: str,
) -> None:
    """Open the AWS console as ENTITLEMENT's role (the link is valid for 15 minutes)."""
    from broker.console import console_url, seconds_left
    from broker.errors import BrokerError
    from broker.sts import IssuedCredentials

    credentials, body = state.issue(entitlement, duration=duration, reason=reason)
    issued = IssuedCredentials(
        access_key_id=credentials.access_key_id,
        secret_access_key=credentials.secret_access_key,
        session_token=credentials.session_token,
        expiration=credentials.expiration,
        assumed_role_arn=str(body.get("role_arn", "")),
        role_session_name=str(body.get("role_session_name", "")),
        source_identity=str(body.get("source_identity", "")),
        duration_seconds=int(body.get("duration_seconds") or 0),
    )
    try:
        url = console_url(
            issued,
            federation_endpoint=federation_endpoint,
            destination=destination,
            issuer_url=state.broker_url(),
            session_duration=seconds_left(issued, state.clock()),
        )
    except BrokerError as exc:
        raise click.ClickException(exc.explain()) from exc
    if not print_only and state.browser(url):
        click.echo(f"Opened the AWS console as {issued.assumed_role_arn} in your browser.")
        return
    click.echo(url)
