"""People as the identity provider knows them: one row per (issuer, subject), kept fresh."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.auth.identity import derive_source_identity
from broker.models import Principal
from broker.policy import Person

LAST_SEEN_RESOLUTION = timedelta(minutes=5)


def find_principal(session: Session, issuer: str, subject: str) -> Principal | None:
    """The person's row, or None."""
    return session.scalar(
        select(Principal).where(Principal.issuer == issuer, Principal.subject == subject)
    )


def record_claims(
    session: Session,
    person: Person,
    attributes: Mapping[str, Any],
    *,
    claims_at: datetime,
    now: datetime,
) -> Principal:
    """Create or update the person's row with what the provider stated at `claims_at`.

    The row is keyed by (issuer, subject) only. `source_identity` is derived when the row is
    created and never rewritten. Claims older than those already stored do not replace them.
    """
    identity = person.identity
    row = find_principal(session, identity.issuer, identity.subject)
    if row is None:
        row = Principal(
            issuer=identity.issuer,
            subject=identity.subject,
            source_identity=derive_source_identity(identity.issuer, identity.subject),
            created_at=now,
        )
        session.add(row)
    if row.claims_at is None or claims_at >= row.claims_at:
        row.claims = dict(attributes)
        row.claims_at = claims_at
        row.email = identity.email
        display = attributes.get("name")
        row.display_name = display[:255] if isinstance(display, str) else None
        row.groups = sorted(identity.groups)
        row.kind = person.kind
        row.valid_until = person.valid_until
        row.sponsor = person.sponsor
    if row.last_seen_at is None or now - row.last_seen_at > LAST_SEEN_RESOLUTION:
        row.last_seen_at = now  # coarse on purpose: no write per request just for this
    session.flush()
    return row
