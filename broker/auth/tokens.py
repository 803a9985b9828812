"""Broker-issued opaque bearer tokens: random, stored only as SHA-256, expiring, revocable."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from broker.auth.identity import attributes_of, auth_context
from broker.auth.principals import record_claims
from broker.errors import Unauthenticated
from broker.models import ApiToken, Principal
from broker.policy import Person

PREFIX = "brk_"


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_broker_token(value: str) -> bool:
    """True for tokens this broker minted (as opposed to JWTs)."""
    return value.startswith(PREFIX)


def mint(
    session: Session,
    principal: Principal,
    *,
    name: str,
    kind: str,
    ttl: timedelta,
    now: datetime,
    claims: dict[str, Any] | None = None,
) -> tuple[str, ApiToken]:
    """Create a token for `principal`; the plaintext is returned once and never stored."""
    plaintext = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        token_hash=hash_token(plaintext),
        principal_id=principal.id,
        name=name,
        kind=kind,
        claims=claims or {},
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(row)
    session.flush()
    return plaintext, row


def mint_for_person(
    session: Session, person: Person, *, name: str, kind: str, ttl: timedelta, now: datetime
) -> tuple[str, ApiToken]:
    """Record the person (claims as of now) and mint a token carrying their sign-in context."""
    principal = record_claims(
        session, person, attributes_of(person.identity), claims_at=now, now=now
    )
    identity = person.identity
    context = auth_context({"amr": list(identity.amr), "acr": identity.acr})
    return mint(session, principal, name=name, kind=kind, ttl=ttl, now=now, claims=context)


TOUCH_RESOLUTION = timedelta(minutes=5)
"""`last_used_at` is coarse on purpose: no write per request just for it."""


def authenticate(
    session: Session, plaintext: str, *, now: datetime, touch: bool = True
) -> tuple[ApiToken, Principal]:
    """Resolve a bearer token to its row and principal (one query), or raise Unauthenticated.

    With ``touch`` the row's `last_used_at` is moved on when it is due (see
    :data:`TOUCH_RESOLUTION`); callers reading in a read-only transaction pass ``touch=False``
    and call :func:`touch` apart when :func:`needs_touch` says so.
    """
    found = session.execute(_lookup(), {"hash": hash_token(plaintext)}).first()
    if found is None:
        raise Unauthenticated(
            "The access token is not valid.", hint="Sign in again with `broker login`."
        )
    row, principal = found[0], found[1]
    if row.revoked_at is not None:
        raise Unauthenticated(
            "The access token was revoked.", hint="Sign in again with `broker login`."
        )
    if row.expires_at <= now:
        raise Unauthenticated(
            "The access token has expired.", hint="Sign in again with `broker login`."
        )
    if touch and needs_touch(row, now):
        row.last_used_at = now
    return row, principal


def needs_touch(row: ApiToken, now: datetime) -> bool:
    """Whether the token's `last_used_at` is old enough to be written again."""
    return row.last_used_at is None or now - row.last_used_at > TOUCH_RESOLUTION


def touch(session: Session, token_id: str, *, now: datetime) -> None:
    """Record that the token was used now."""
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


def revoke_for_principals(session: Session, principal_ids: Sequence[str], *, now: datetime) -> int:
    """Revoke every live token of these principals; return how many."""
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.principal_id.in_(principal_ids), ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


@cache
def _lookup() -> Any:
    """A token and its person by the token's hash (built once: every API request asks)."""
    return (
        select(ApiToken, Principal)
        .join(Principal, Principal.id == ApiToken.principal_id)
        .where(ApiToken.token_hash == bindparam("hash"))
    )
