"""The engineer's commands: sign in with the device flow, then get AWS credentials anywhere.

Wire them into the `broker` command with `register(group)`.
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add `login`, `logout`, `whoami`, `roles`, `request`, `creds`, `configure`,
    `credential-process`, `exec` and `console` to `group`."""
    from broker.cli.client.access import request, roles
    from broker.cli.client.console import console
    from broker.cli.client.creds import configure, credential_process, creds, exec_command
    from broker.cli.client.login import login, logout, whoami

    for command in (
        login,
        logout,
        whoami,
        roles,
        request,
        creds,
        configure,
        credential_process,
        exec_command,
        console,
    ):
        group.add_command(command)


def standalone() -> click.Group:
    """The engineer's commands on their own group (e.g. for a client-only install)."""
    group = click.Group("broker", help="Temporary AWS credentials from the broker.")
    register(group)
    return group
