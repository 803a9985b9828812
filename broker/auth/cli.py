"""`broker token ...`: mint broker bearer tokens for a person the broker knows (admin side).

A token acts for one principal, the person's only row: someone who signed in through the
identity provider (named by email, or by issuer and subject), or a broker-local identity for
automation that an admin creates here with `--create` (issuer `urn:broker:admin-minted`,
its groups declared by the admin). Minting never creates a second principal for a person.
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.audit import AuditLog, EventContext, NewEvent
from broker.auth import tokens
from broker.auth.identity import LOCAL_ISSUER, auth_context, identity_of
from broker.db import get_database
from broker.models import Principal, utcnow
from broker.policy import Identity, parse_duration
from broker.policy_store import get_policy


@click.group("token")
def token_cli() -> None:
    """Manage broker API tokens."""


@token_cli.command("mint")
@click.option("--email", default=None, help="The person's email (someone the broker knows).")
@click.option("--issuer", default=None, help="With --subject: the person's identity provider.")
@click.option("--subject", default=None, help="With --issuer: the person's subject (sub).")
@click.option(
    "--create",
    is_flag=True,
    help="Create a broker-local identity for EMAIL (automation); refused if anyone has it.",
)
@click.option("--groups", default=None, help="Broker-local identities only: comma-separated.")
@click.option("--amr", default="", help="Comma-separated authentication methods (e.g. mfa).")
@click.option("--ttl", default="12h", show_default=True, help="Lifetime, e.g. 1h, 90m.")
@click.option("--name", default="admin-minted", show_default=True)
@with_appcontext
def mint_command(
    email: str | None,
    issuer: str | None,
    subject: str | None,
    create: bool,
    groups: str | None,
    amr: str,
    ttl: str,
    name: str,
) -> None:
    """Mint a token for a person and print it once (it is stored only hashed)."""
    if (issuer is None) != (subject is None):
        raise click.UsageError("--issuer and --subject go together.")
    if email is None and subject is None:
        raise click.UsageError("Name the person: --email, or --issuer and --subject.")
    try:
        lifetime = parse_duration(ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from exc
    now = utcnow()
    snapshot = get_policy(current_app)
    amr_list = tuple(a.strip() for a in amr.split(",") if a.strip())
    group_list = None
    if groups is not None:
        group_list = frozenset(g.strip() for g in groups.split(",") if g.strip())
    with get_database(current_app).session() as session:
        principal = _person(session, email, issuer, subject, create=create)
        if principal is None:
            assert email is not None  # noqa: S101 - _person creates only for --email
            attributes = {"email": email.lower(), "groups": sorted(group_list or ())}
            local = email.lower()
            identity = Identity(LOCAL_ISSUER, local, local, group_list or frozenset())
        else:
            if group_list is not None and principal.issuer != LOCAL_ISSUER:
                raise click.UsageError(
                    f"{principal.email}'s groups come from their identity provider; --groups "
                    "applies to broker-local identities only."
                )
            attributes = dict(principal.claims or {})
            if group_list is not None:
                attributes["groups"] = sorted(group_list)
            identity = identity_of(principal.issuer, principal.subject, attributes, {})
        identity = Identity(
            identity.issuer,
            identity.subject,
            identity.email,
            identity.groups,
            dict(attributes),
            amr_list,
        )
        person = snapshot.evaluator.resolve(identity)
        if principal is None or principal.issuer == LOCAL_ISSUER:
            plaintext, row = tokens.mint_for_person(
                session, person, name=name, kind="admin", ttl=lifetime, now=now
            )
        else:  # a provider's person: their claims stay the provider's, refreshed as usual
            context = auth_context({"amr": list(amr_list)})
            plaintext, row = tokens.mint(
                session, principal, name=name, kind="admin", ttl=lifetime, now=now, claims=context
            )
        AuditLog().append(
            session,
            EventContext(actor="admin-cli", client="cli", policy_version=snapshot.version),
            NewEvent(
                "token.mint",
                target=person.identity.email,
                decision="allow",
                details={
                    "token_id": row.id,
                    "principal_id": row.principal_id,
                    "created_person": principal is None,
                    "expires_at": row.expires_at.isoformat(),
                },
            ),
        )
    click.echo(plaintext)


def _person(
    session: Session, email: str | None, issuer: str | None, subject: str | None, *, create: bool
) -> Principal | None:
    """The one principal named, or None when `--create` may make a broker-local one."""
    if subject is not None:
        found = session.scalar(
            select(Principal).where(Principal.issuer == issuer, Principal.subject == subject)
        )
        if found is None:
            raise click.ClickException(
                f"Nobody with subject {subject!r} at {issuer} has signed in to the broker; they "
                "sign in once first (tokens are never minted for unknown provider identities)."
            )
        return found
    assert email is not None  # noqa: S101 - checked by the caller
    matches = session.scalars(
        select(Principal).where(func.lower(Principal.email) == email.lower())
    ).all()
    if len(matches) > 1:
        listed = ", ".join(f"{p.issuer} {p.subject}" for p in matches)
        raise click.ClickException(
            f"{email} names several people ({listed}); use --issuer and --subject."
        )
    if matches:
        if create:
            raise click.ClickException(f"{email} already exists; drop --create to mint for them.")
        return matches[0]
    if not create:
        raise click.ClickException(
            f"Nobody with email {email} is known to the broker. A person signs in once first; "
            "for an automation identity that exists only in the broker, add --create."
        )
    return None
