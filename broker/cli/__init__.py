"""The `broker` command: server-side admin commands and the engineer's client commands."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import FlaskGroup

from broker.errors import BrokerError


def _load_app() -> Flask:
    from broker import create_app

    try:
        return create_app()
    except BrokerError as exc:
        raise click.ClickException(exc.explain()) from exc


class BrokerGroup(FlaskGroup):
    """The top-level group: server commands load the app lazily, only when they run.

    Flask's own group loads the app just to list commands, which would make `broker --help`
    on an engineer's laptop fail for want of a server configuration.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Our commands only; no app load."""
        return sorted(self.commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Our commands only; no app load."""
        return self.commands.get(cmd_name)


def build() -> click.Group:
    """Assemble the command tree (no work at import time)."""
    from broker.audit.cli import audit_cli
    from broker.auth.cli import token_cli
    from broker.cli.client import register
    from broker.cli.policy import policy
    from broker.devstack import dev_command
    from broker.doctor.cli import doctor_command
    from broker.iam_setup import iam_policies_command
    from broker.migrate import db_cli
    from broker.scheduler import scheduler_command

    group = BrokerGroup(
        name="broker",
        create_app=_load_app,
        add_default_commands=False,
        add_version_option=False,
        load_dotenv=False,
        set_debug_flag=False,
        help="Zero-trust temporary credentials for AWS.",
    )
    # Flask's --app/--env-file/--debug options mean nothing here; the broker builds its own app.
    group.params = [p for p in group.params if p.name not in ("app", "env_file", "debug")]
    for command in (
        policy,
        db_cli,
        audit_cli,
        token_cli,
        dev_command,
        scheduler_command,
        iam_policies_command,
        doctor_command,
    ):
        group.add_command(command)
    register(group)
    return group


def main() -> None:
    """Console-script entry point."""
    build()(prog_name="broker")
