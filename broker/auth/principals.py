"""People as the identity provider knows them, kept in step with the policy's view of them."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.models import Principal
from broker.policy import Identity, Person

LAST_SEEN_RESOLUTION = timedelta(minutes=5)


def sync_principal(session: Session, person: Person, *, now: datetime) -> Principal:
    """Create or update the principal row for a resolved person; return it."""
    identity = person.identity
    row = session.scalar(
        select(Principal).where(
            Principal.issuer == identity.issuer, Principal.subject == identity.subject
        )
    )
    if row is None:
        row = Principal(issuer=identity.issuer, subject=identity.subject, created_at=now)
        session.add(row)
    row.email = identity.email
    row.source_identity = person.stable_id
    display = identity.claims.get("name")
    row.display_name = display if isinstance(display, str) else None
    row.groups = sorted(identity.groups)
    row.kind = person.kind
    row.valid_until = person.valid_until
    row.sponsor = person.sponsor
    if row.last_seen_at is None or now - row.last_seen_at > LAST_SEEN_RESOLUTION:
        row.last_seen_at = now  # coarse on purpose: no write per request just for this
    session.flush()
    return row


def identity_from_claims(
    claims: dict[str, object], *, issuer: str, groups_claim: str = "groups"
) -> Identity:
    """Build an Identity from validated ID token (or stored) claims."""
    groups = claims.get(groups_claim) or []
    if isinstance(groups, str):
        groups = [groups]
    amr = claims.get("amr") or []
    if isinstance(amr, str):
        amr = [amr]
    acr = claims.get("acr")
    return Identity(
        issuer=issuer,
        subject=str(claims["sub"]),
        email=str(claims.get("email") or claims["sub"]).lower(),
        groups=frozenset(str(g) for g in groups) if isinstance(groups, list) else frozenset(),
        claims=dict(claims),
        amr=tuple(str(a) for a in amr) if isinstance(amr, list) else (),
        acr=str(acr) if acr is not None else None,
    )
