"""Who is calling the API: a broker bearer token, or an ID token from the configured issuer."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import g, request

from broker.audit import NewEvent
from broker.auth import tokens
from broker.auth.identity import ClaimsRefused, StaleClaims, auth_context
from broker.auth.idtoken import InvalidIdToken
from broker.auth.principals import find_principal
from broker.auth.signin import caller_for, sign_in_with_claims
from broker.db import get_database
from broker.errors import Unauthenticated
from broker.grants import Caller, GrantService, RequestMeta
from broker.models import utcnow
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
        caller = _caller_from_broker_token(service, value)
    else:
        caller = _caller_from_id_token(service, value)
    g.caller = caller
    return caller


def _caller_from_broker_token(service: GrantService, value: str) -> Caller:
    """Token and person in one read (no write lock, no commit to wait for); the token's
    `last_used_at` is written apart, once every few minutes."""
    now = utcnow()
    database = get_database()
    caller: Caller | None = None
    with database.read_session() as session:
        row, principal = tokens.authenticate(session, value, now=now, touch=False)
        g.token_id = row.id
        principal_id, auth = principal.id, auth_context(row.claims or {})
        try:
            caller = service.caller_of(principal, auth)
        except StaleClaims:
            caller = None  # asked again below, after the provider is asked about them
        touch = tokens.needs_touch(row, now)
    if touch:
        with database.session() as session:
            tokens.touch(session, row.id, now=now)
    if caller is not None:
        return caller
    return caller_for(service, principal_id, auth, request_meta())


def _caller_from_id_token(service: GrantService, value: str) -> Caller:
    validator = services().id_tokens
    if validator is None:
        raise Unauthenticated(
            "ID tokens are not accepted: no identity provider is configured.",
            hint="Use a broker token from `broker login`.",
        )
    claims = validator.validate_bearer(value)
    issued_at = datetime.fromtimestamp(int(claims["iat"]), UTC)
    with get_database().read_session() as session:
        known = find_principal(session, validator.issuer, str(claims["sub"]))
        principal_id = known.id if known is not None else None
        signed_out_at = known.signed_out_at if known is not None else None
    if signed_out_at is not None and issued_at <= signed_out_at:
        raise InvalidIdToken(
            "This ID token was issued before you signed out of the broker.",
            hint="Get a new ID token from your identity provider.",
        )
    meta = request_meta()
    try:
        return sign_in_with_claims(
            service, claims, meta, issuer=validator.issuer, claims_at=min(issued_at, utcnow())
        )
    except ClaimsRefused as exc:
        _audit_refusal(service, claims, exc, meta)
        raise
    except StaleClaims:
        if principal_id is None:
            raise
        # The token's claims are older than the bound; the person's stored ones may be fresher.
        return caller_for(service, principal_id, auth_context(claims), meta)


def _audit_refusal(
    service: GrantService, claims: dict[str, object], exc: ClaimsRefused, meta: RequestMeta
) -> None:
    """Record an ID token refused for its claims (best effort: the refusal stands either way)."""
    service.record_best_effort(
        str(claims.get("email") or f"sub:{claims.get('sub')}"),
        meta,
        NewEvent(
            "auth.sign_in_failed",
            target=str(claims.get("iss", "")),
            decision="deny",
            reason=exc.message,
            details={"code": exc.reason, "via": "id_token_bearer"},
        ),
    )
