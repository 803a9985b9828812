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


def build() -> click.Group:
    """Assemble the command tree (no work at import time)."""
    from broker.audit.cli import audit_cli
    from broker.auth.cli import token_cli
    from broker.cli.policy import policy
    from broker.devstack import dev_command
    from broker.iam_setup import iam_policies_command
    from broker.migrate import db_cli
    from broker.scheduler import scheduler_command

    group = FlaskGroup(
        name="broker",
        create_app=_load_app,
        add_version_option=False,
        load_dotenv=False,
        set_debug_flag=False,
        help="Zero-trust temporary credentials for AWS.",
    )
    for command in (
        policy,
        db_cli,
        audit_cli,
        token_cli,
        dev_command,
        scheduler_command,
        iam_policies_command,
    ):
        group.add_command(command)
    return group


def main() -> None:
    """Console-script entry point."""
    build()(prog_name="broker")
