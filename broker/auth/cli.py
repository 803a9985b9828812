"""`broker token ...`: mint and revoke broker bearer tokens (admin side)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from broker.audit import AuditLog, EventContext, NewEvent
from broker.auth import tokens
from broker.db import get_database
from broker.models import utcnow
from broker.policy import Identity, parse_duration
from broker.policy_store import get_policy

LOCAL_ISSUER = "urn:broker:admin-minted"


@click.group("token")
def token_cli() -> None:
    """Manage broker API tokens."""


@token_cli.command("mint")
@click.option("--email", required=True, help="The person the token acts for.")
@click.option("--groups", default="", help="Comma-separated groups, as the IdP would say.")
@click.option("--amr", default="", help="Comma-separated authentication methods (e.g. mfa).")
@click.option("--ttl", default="12h", show_default=True, help="Lifetime, e.g. 1h, 90m.")
@click.option("--name", default="admin-minted", show_default=True)
@with_appcontext
def mint_command(email: str, groups: str, amr: str, ttl: str, name: str) -> None:
    """Mint a token for EMAIL and print it once (it is stored only hashed)."""
    now = utcnow()
    group_list = sorted({g.strip() for g in groups.split(",") if g.strip()})
    amr_list = [a.strip() for a in amr.split(",") if a.strip()]
    identity = Identity(
        issuer=current_app.config.get("OIDC_ISSUER") or LOCAL_ISSUER,
        subject=email.lower(),
        email=email.lower(),
        groups=frozenset(group_list),
        amr=tuple(amr_list),
    )
    snapshot = get_policy(current_app)
    person = snapshot.evaluator.resolve(identity)
    with get_database(current_app).session() as session:
        plaintext, row = tokens.mint_for_person(
            session, person, name=name, kind="admin", ttl=parse_duration(ttl), now=now
        )
        AuditLog().append(
            session,
            EventContext(actor="admin-cli", client="cli", policy_version=snapshot.version),
            NewEvent(
                "token.mint",
                target=person.identity.email,
                decision="allow",
                details={"token_id": row.id, "expires_at": row.expires_at.isoformat()},
            ),
        )
    click.echo(plaintext)
