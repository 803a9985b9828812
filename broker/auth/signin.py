"""Turning what the provider said into a Caller, for every way in (web, ID token, tokens).

Fresh claims from the provider (a web sign-in, an ID token used as a bearer, a refresh) pass
`person_claims` and are recorded on the person's one principal row. Sessions and tokens carry
only how their sign-in was made; the person's attributes come from that row, refreshed from the
provider when they pass the freshness bound, or the caller is asked to sign in again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from broker.auth.identity import StaleClaims, auth_context, identity_of, person_claims
from broker.db import get_database
from broker.grants import Caller, GrantService, RequestMeta
from broker.models import Principal
from broker.services import claim_rules, services


def sign_in_with_claims(
    service: GrantService,
    claims: Mapping[str, Any],
    meta: RequestMeta,
    *,
    issuer: str,
    claims_at: datetime,
    idp_tokens: dict[str, Any] | None = None,
) -> Caller:
    """Check the provider's validated claims, record them on the person and return the Caller.

    Raises ClaimsRefused when a required claim is missing or unverified.
    """
    attributes = person_claims(claims, issuer=issuer, rules=claim_rules())
    identity = identity_of(issuer, str(claims["sub"]), attributes, auth_context(claims))
    sealed = services().cipher.seal(idp_tokens) if idp_tokens else None
    return service.sign_in(identity, meta, claims_at=claims_at, idp_tokens=sealed)


def caller_for(
    service: GrantService, principal_id: str, auth: Mapping[str, Any], meta: RequestMeta
) -> Caller:
    """The person behind a session or token, their claims refreshed first when stale."""
    try:
        return service.caller_for(principal_id, auth, meta)
    except StaleClaims:
        if not refresh_claims(service, principal_id, meta):
            raise
    return service.caller_for(principal_id, auth, meta)


def refresh_claims(service: GrantService, principal_id: str, meta: RequestMeta) -> bool:
    """Ask the provider about this person again; True when their claims are now fresh.

    Raises ClaimsRefused when the provider's current answer no longer meets the requirements.
    """
    shared = services()
    refresher = shared.refresher
    if refresher is None:
        return False
    with get_database().read_session() as session:
        row = session.get(Principal, principal_id)
        if row is None or row.issuer != refresher.validator.issuer:
            return False
        subject, sealed = row.subject, row.idp_tokens
    now = service.clock()
    refreshed = refresher.refresh(subject, shared.cipher.open(sealed), now)
    if refreshed is None:
        return False
    sign_in_with_claims(
        service,
        {**refreshed.claims, "sub": subject},
        meta,
        issuer=refresher.validator.issuer,
        claims_at=now,
        idp_tokens=refreshed.tokens,
    )
    return True
