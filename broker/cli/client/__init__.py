"""The engineer's commands: sign in with the device flow, then get AWS credentials anywhere.

Wire them into the `broker` command with `register(group)`.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the engineer's commands to `group`, in the order a newcomer meets them."""
    from broker.cli.client.access import request, roles
    from broker.cli.client.console import console
    from broker.cli.client.creds import configure, creds
    from broker.cli.client.execute import exec_command
    from broker.cli.client.login import login, logout, whoami
    from broker.cli.client.process import credential_process

    for command in (
        login,
        whoami,
        roles,
        request,
        creds,
        configure,
        credential_process,
        exec_command,
        console,
        logout,
    ):
        group.add_command(command)


def standalone() -> click.Group:
    """The engineer's commands on their own group (e.g. for a client-only install)."""
    group = click.Group("broker", help="Temporary AWS credentials from the broker.")
    register(group)
    return group
