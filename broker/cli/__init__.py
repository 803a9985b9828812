"""The `broker` command: the engineer's client commands, and admin commands grouped apart.

Importing this module imports click and nothing else: the engineer's commands are light, and
admin commands are imported only when they run (see `broker.cli.group`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from broker.cli.group import BrokerCli, LazyCommand

if TYPE_CHECKING:
    from flask import Flask

# Admin commands load Flask, SQLAlchemy and the app: name them here, never import them above.
ADMIN_COMMANDS: dict[str, LazyCommand] = {
    "activity": LazyCommand(
        "broker.activity.cli:activity_cli",
        "What broker-issued credentials did (from CloudTrail), and what the detections caught.",
    ),
    "audit": LazyCommand(
        "broker.audit.cli:audit_cli", "Inspect, verify, export and report on the audit trail."
    ),
    "db": LazyCommand("broker.migrate:db_cli", "Manage the broker database."),
    "dev": LazyCommand(
        "broker.devstack:dev_command",
        "Run the broker in dev mode: embedded AWS endpoint, identity provider, demo users.",
    ),
    "doctor": LazyCommand(
        "broker.doctor.cli:doctor_command",
        "Check configuration, database, identity provider and AWS roles; exit 1 on any failure.",
    ),
    "iam-policies": LazyCommand(
        "broker.iam_setup:iam_policies_command",
        "Print or write the broker's IAM policy and what each target role needs.",
    ),
    "keys": LazyCommand(
        "broker.activity.cli:keys_cli",
        "The long-lived IAM user access keys the broker replaces (read-only).",
    ),
    "policy": LazyCommand(
        "broker.cli.policy:policy", "Check, explain, test and diff the access policy files."
    ),
    "scheduler": LazyCommand(
        "broker.scheduler.cli:scheduler_command",
        "End grants on time and put revocations in place on AWS (never run inside web workers).",
    ),
    "token": LazyCommand("broker.auth.cli:token_cli", "Manage broker API tokens."),
}


def _load_app() -> Flask:
    from broker import create_app
    from broker.errors import BrokerError

    try:
        return create_app()
    except BrokerError as exc:
        raise click.ClickException(exc.explain()) from exc


def build() -> click.Group:
    """Assemble the command tree (no work at import time)."""
    from broker.cli.client import register

    group = BrokerCli(
        name="broker",
        admin=ADMIN_COMMANDS,
        create_app=_load_app,
        help="Zero-trust temporary credentials for AWS.",
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    click.version_option(package_name="broker", prog_name="broker")(group)
    register(group)
    group.engineer.update(group.commands)
    return group


def main() -> None:
    """Console-script entry point."""
    build()(prog_name="broker")
