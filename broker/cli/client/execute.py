"""`broker exec`: a command, or a shell, with an entitlement's credentials in its environment.

Fresh credentials every time (never the cache): the child may run for as long as they last.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import click

from broker.cli.client.environment import child_environment
from broker.cli.client.errors import ClientError
from broker.cli.client.options import duration_option, reason_option, region_option
from broker.cli.client.state import ClientState, answer_region, pass_state


def user_shell(environ: Mapping[str, str] = os.environ) -> str:
    """The person's shell: $SHELL, else %COMSPEC% on Windows, else /bin/sh."""
    if environ.get("SHELL"):
        return environ["SHELL"]
    if sys.platform == "win32":
        return environ.get("COMSPEC", "cmd.exe")
    return "/bin/sh"


# Our options may follow ENTITLEMENT; `--` ends them, and everything after it is the command's.
@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("entitlement")
@duration_option
@reason_option
@region_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_state
def exec_command(
    state: ClientState,
    entitlement: str,
    duration: str | None,
    reason: str | None,
    region: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND (default: your shell) with ENTITLEMENT's credentials in its environment.

    Example: broker exec app-read -- aws s3 ls. Exits with COMMAND's exit code.
    """
    credentials, body = state.issue(entitlement, duration=duration, reason=reason)
    region = region or answer_region(body)
    env = child_environment(credentials, region, os.environ)
    if not command:
        command = (user_shell(),)
        where = f", region {region}" if region else ""
        click.echo(
            f"Starting {command[0]} with {entitlement}'s credentials (until "
            f"{credentials.expiration:%H:%M} UTC{where}); `exit` returns to your shell.",
            err=True,
        )
    try:
        result = subprocess.run(list(command), env=env, check=False)  # noqa: S603 - the user's command
    except FileNotFoundError as exc:
        raise ClientError(f"Command not found: {command[0]}", code="not_found") from exc
    code = result.returncode
    sys.exit(128 - code if code < 0 else code)
