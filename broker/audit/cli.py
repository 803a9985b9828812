"""`broker audit ...`: verify the chain in the database."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from broker.audit.chain import verify_database
from broker.db import get_database


@click.group("audit")
def audit_cli() -> None:
    """Inspect and verify the audit trail."""


@audit_cli.command("verify")
@with_appcontext
def verify_command() -> None:
    """Verify the hash chain in the database; name the first broken event."""
    with get_database(current_app).session() as session:
        result = verify_database(session)
    if result.ok:
        click.echo(f"audit chain OK: {result.checked} events, head {result.last_hash[:16]}")
        return
    click.echo(str(result.broken), err=True)
    raise SystemExit(1)
