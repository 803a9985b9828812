"""`broker doctor`: run every check against the server's configuration and print the report."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask

from broker.doctor import Check, Report
from broker.doctor.aws import check_chaining, check_identity, check_roles
from broker.doctor.server import check_database, check_identity_provider, check_policy
from broker.errors import BrokerError
from broker.iam_setup import target_roles
from broker.policy import LoadedPolicy, PolicyLoadError, load_policy_dir


@click.command("doctor")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: for people; json: one JSON document.",
)
@click.option(
    "--policy-dir",
    "--dir",
    "policy_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Check the roles of this policy directory (default: the configured BROKER_POLICY_DIR).",
)
@click.pass_context
def doctor_command(ctx: click.Context, output_format: str, policy_dir: Path | None) -> None:
    """Check configuration, database, identity provider and AWS roles; exit 1 on any failure."""
    from broker.cli.app import server_app

    try:
        app = server_app(ctx)
    except (click.ClickException, BrokerError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else exc.explain()
        checks = [Check("configuration", "fail", message, fix="Fix the setting named above.")]
    else:
        checks = diagnose(app, policy_dir)
    report = Report(checks)
    click.echo(report.to_json() if output_format == "json" else report.to_text(), nl=False)
    ctx.exit(1 if report.failed else 0)


def diagnose(app: Flask, policy_dir: Path | None = None) -> list[Check]:
    """Every check, in order, for a loaded app (and optionally another policy directory)."""
    from broker.db import get_database
    from broker.policy_store import get_policy
    from broker.services import services

    cfg = app.config
    env = str(cfg["ENV"])
    checks = [
        Check("configuration", "ok", f"BROKER_ENV={env}: every setting valid")
        if env == "production"
        else Check(
            "configuration",
            "warn",
            f"BROKER_ENV={env}: valid, but not a production configuration",
            fix="Set BROKER_ENV=production (the default) for a real deployment.",
        )
    ]
    loaded: LoadedPolicy | None = get_policy(app).loaded
    if policy_dir is not None:
        try:
            loaded = load_policy_dir(policy_dir)
        except PolicyLoadError as exc:
            loaded = None
            checks.append(
                Check(
                    "policy",
                    "fail",
                    f"{policy_dir} is not valid:\n{exc}",
                    fix=f"broker policy check {policy_dir}",
                )
            )
    if loaded is not None:
        checks.extend(check_policy(loaded))
    checks.append(check_database(get_database(app), production=env == "production"))
    checks.extend(
        check_identity_provider(
            cfg.get("OIDC_ISSUER"),
            cfg.get("OIDC_CLIENT_ID"),
            client_secret=cfg.get("OIDC_CLIENT_SECRET"),
            allowed_algs=tuple(cfg["OIDC_ALLOWED_ALGS"]),
        )
    )
    shared = services(app)
    principal, found = check_identity(shared.sts, shared.iam)
    checks.extend(found)
    if principal is None:
        checks.append(Check("roles", "warn", "not checked: the broker's AWS identity is unknown"))
    elif loaded is not None:
        roles = target_roles(loaded.policy)
        checks.append(check_chaining(principal, roles))
        checks.extend(check_roles(shared.iam, principal, roles))
    return checks
