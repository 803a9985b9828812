"""Who is calling the API: a broker bearer token, or an ID token from the configured issuer."""

from __future__ import annotations

from flask import current_app, g, request

from broker.auth import tokens
from broker.auth.principals import identity_from_claims
from broker.db import get_database
from broker.errors import Unauthenticated
from broker.grants import Caller, GrantService, RequestMeta
from broker.models import utcnow
from broker.policy import Identity
from broker.services import services


def request_meta(client: str | None = None) -> RequestMeta:
    """Client kind, source address and user agent of the current request."""
    declared = request.headers.get("X-Broker-Client", "")
    kind = client or (declared if declared in ("cli", "web", "api") else "api")
    return RequestMeta(
        client=kind,
        ip=request.remote_addr,
        user_agent=request.headers.get("User-Agent"),
    )


def bearer_token() -> str:
    """The bearer token of the request, or Unauthenticated."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated(
            "This endpoint needs `Authorization: Bearer <token>`.",
            hint="Sign in with `broker login`, or send an ID token from your identity provider.",
        )
    return value.strip()


def authenticate(service: GrantService) -> Caller:
    """Resolve the caller of this request (cached on `g`)."""
    cached: Caller | None = g.get("caller")
    if cached is not None:
        return cached
    value = bearer_token()
    if tokens.looks_like_broker_token(value):
        identity = _identity_from_broker_token(value)
    else:
        identity = _identity_from_id_token(value)
    caller = service.sign_in(identity, request_meta())
    g.caller = caller
    return caller


def _identity_from_broker_token(value: str) -> Identity:
    with get_database().session() as session:
        row, principal = tokens.authenticate(session, value, now=utcnow())
        g.token_id = row.id
        claims = dict(row.claims or {})
        claims.setdefault("sub", principal.subject)
        claims.setdefault("email", principal.email)
        return identity_from_claims(
            claims,
            issuer=principal.issuer,
            groups_claim="groups",
        )


def _identity_from_id_token(value: str) -> Identity:
    validator = services().id_tokens
    if validator is None:
        raise Unauthenticated(
            "ID tokens are not accepted: no identity provider is configured.",
            hint="Use a broker token from `broker login`.",
        )
    claims = validator.validate(value)
    return identity_from_claims(
        claims,
        issuer=validator.issuer,
        groups_claim=current_app.config.get("OIDC_GROUPS_CLAIM", "groups"),
    )
