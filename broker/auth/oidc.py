"""Web sign-in with OpenID Connect: authorization code + PKCE (S256) + state + nonce.

One sign-in is one `LoginAttempt` row: the state is stored hashed, is usable once, expires after
ten minutes, and belongs to the browser that started it (a short-lived `browser_binding`
cookie whose hash is kept with the attempt), so a callback carrying someone else's state is
refused. authlib speaks OAuth 2 to the provider; the ID token is checked by `IdTokenValidator`
(signature, algorithm allow-list, iss, aud, azp, exp/iat, nonce). Success starts a fresh
server-side session (a new id at every sign-in); every refusal that matters is audited.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from authlib.integrations.requests_client import OAuth2Session
from flask import Blueprint, current_app, redirect, render_template, request
from sqlalchemy import delete, update
from werkzeug.wrappers import Response

from broker.audit import AuditLog, EventContext, NewEvent
from broker.auth.identity import ClaimsRefused, auth_context
from broker.auth.idtoken import IdTokenValidator, InvalidIdToken
from broker.auth.refresh import provider_tokens
from broker.auth.signin import sign_in_with_claims
from broker.auth.websession import (
    SESSION_COOKIE,
    cookie_name,
    current_caller,
    current_session,
    delete_cookie,
    end_session,
    hash_secret,
    mark_signed_out,
    set_cookie,
    setting,
    start_session,
    web_meta,
)
from broker.db import get_database
from broker.errors import Forbidden, ServiceUnavailable, Unauthenticated
from broker.models import LoginAttempt, utcnow
from broker.policy_store import get_policy
from broker.services import grant_service, services
from broker.web.security import limit_sign_in, safe_next

bp = Blueprint("oidc", __name__)

LOGIN_TTL = timedelta(minutes=10)
BINDING_COOKIE = "browser_binding"
CALLBACK_PATH = "/auth/callback"
SIGNED_OUT_PATH = "/signed-out"
# Scopes a provider may decline without weakening any decision (no refresh token: sign in again).
OPTIONAL_SCOPES = frozenset({"offline_access"})


class SignInFailed(Unauthenticated):
    """The sign-in could not be completed; `reason` is a stable code for the audit trail."""

    code = "sign_in_failed"

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or "Start again from the broker's sign-in page.")
        self.reason = reason


@dataclass(frozen=True)
class ClaimedAttempt:
    """A login attempt this callback has consumed."""

    nonce: str
    code_verifier: str
    next_path: str


# -- routes -------------------------------------------------------------------------------------


@bp.get("/login")
def login() -> Response:
    """Start a sign-in: record the attempt and send the browser to the identity provider."""
    next_path = safe_next(request.args.get("next"))
    if current_caller() is not None:
        return redirect(next_path)
    limit_sign_in()
    validator = _validator()
    metadata = validator.metadata()
    now = utcnow()
    binding = request.cookies.get(cookie_name(BINDING_COOKIE), "")
    if not (32 <= len(binding) <= 64):
        binding = secrets.token_urlsafe(32)
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    with get_database().session() as session:
        session.execute(delete(LoginAttempt).where(LoginAttempt.expires_at < now - LOGIN_TTL))
        session.add(
            LoginAttempt(
                state_hash=hash_secret(state),
                nonce=nonce,
                code_verifier=verifier,
                next_path=next_path,
                browser_binding=hash_secret(binding),
                created_at=now,
                expires_at=now + LOGIN_TTL,
            )
        )
    url, _ = _oauth_client().create_authorization_url(
        metadata["authorization_endpoint"], state=state, code_verifier=verifier, nonce=nonce
    )
    response = redirect(url)
    set_cookie(response, BINDING_COOKIE, binding, max_age=int(LOGIN_TTL.total_seconds()))
    return response


@bp.get(CALLBACK_PATH)
def callback() -> Response:
    """Finish a sign-in: check state, exchange the code, validate the ID token, start a session."""
    limit_sign_in()
    now = utcnow()
    issuer = _validator().issuer
    actor = "anonymous"
    try:
        attempt = _claim_attempt(now)
        claims, token = _exchange(attempt)
        actor = str(claims.get("email") or f"sub:{claims.get('sub')}")
        _check_granted_scope(token)
        try:
            caller = sign_in_with_claims(
                grant_service(),
                claims,
                web_meta(),
                issuer=issuer,
                claims_at=now,
                idp_tokens=provider_tokens(token, now),
            )
        except ClaimsRefused as exc:
            raise SignInFailed(exc.reason, exc.message, hint=exc.hint) from exc
    except SignInFailed as exc:
        _audit_failure(exc.reason, exc.message, actor=actor)
        raise
    except Forbidden as exc:
        _audit_failure("cut_off", exc.message, actor=actor)
        raise
    previous = current_session()
    if previous is not None:
        end_session(previous.id_hash, now=now)
    kept = {"iss": issuer, "sub": claims["sub"], "email": caller.email, **auth_context(claims)}
    value, id_hash = start_session(caller.principal_id, kept, now=now)
    identity = caller.person.identity
    _audit(
        caller.email,
        NewEvent(
            "auth.sign_in",
            target=issuer,
            decision="allow",
            details={
                "session_ref": id_hash[:16],
                "subject": identity.subject,
                "source_identity": caller.source_identity,
                "amr": list(identity.amr),
                "acr": identity.acr,
                "groups": sorted(identity.groups),
            },
        ),
    )
    response = redirect(safe_next(attempt.next_path))
    # The binding cookie stays until it expires: another tab's sign-in may still need it.
    set_cookie(response, SESSION_COOKIE, value, max_age=int(setting("SESSION_ABSOLUTE_SECONDS")))
    return response


@bp.post("/logout")
def logout() -> Response:
    """End the broker session, then the provider's session when it offers an end-session URL."""
    active = current_session()
    if active is not None:
        mark_signed_out(active.principal_id, now=utcnow())
    if active is not None and end_session(active.id_hash, now=utcnow()):
        _audit(
            str(active.claims.get("email") or active.claims.get("sub") or "unknown"),
            NewEvent(
                "auth.sign_out",
                target=str(active.claims.get("iss", "")),
                decision="allow",
                details={"session_ref": active.id_hash[:16]},
            ),
        )
    target = SIGNED_OUT_PATH
    end_session_endpoint = _end_session_endpoint()
    if end_session_endpoint:
        params = {
            "client_id": str(current_app.config["OIDC_CLIENT_ID"]),
            "post_logout_redirect_uri": external_url(SIGNED_OUT_PATH),
        }
        target = f"{end_session_endpoint}?{urlencode(params)}"
    response = redirect(target)
    delete_cookie(response, SESSION_COOKIE)
    return response


@bp.get(SIGNED_OUT_PATH)
def signed_out() -> str:
    """The page the provider sends people back to after logout."""
    return render_template("signed_out.html")


# -- the flow -----------------------------------------------------------------------------------


def _claim_attempt(now: datetime) -> ClaimedAttempt:
    """Consume the attempt named by `state`, or refuse (missing, unknown, reused, expired,
    foreign, or the provider said no)."""
    state = request.args.get("state")
    if not state:
        if request.args.get("error"):
            raise _provider_error()
        raise SignInFailed(
            "missing_state", "The sign-in response carried no state, so the broker refused it."
        )
    state_hash = hash_secret(state)
    binding = request.cookies.get(cookie_name(BINDING_COOKIE), "")
    with get_database().session() as session:
        row = session.get(LoginAttempt, state_hash)
        if row is None:
            raise SignInFailed(
                "unknown_state", "This sign-in response does not match any sign-in started here."
            )
        if row.used_at is not None:
            raise SignInFailed(
                "reused_state", "This sign-in response was already used; it works only once."
            )
        claimed = session.execute(
            update(LoginAttempt)
            .where(LoginAttempt.state_hash == state_hash, LoginAttempt.used_at.is_(None))
            .values(used_at=now)
        )
        if not getattr(claimed, "rowcount", 0):
            raise SignInFailed(
                "reused_state", "This sign-in response was already used; it works only once."
            )
        attempt = ClaimedAttempt(row.nonce, row.code_verifier, row.next_path)
        expired = row.expires_at <= now
        foreign = not binding or not secrets.compare_digest(
            hash_secret(binding), row.browser_binding
        )
    if expired:
        raise SignInFailed("expired_state", "This sign-in took longer than 10 minutes.")
    if foreign:
        raise SignInFailed(
            "foreign_state",
            "This sign-in response belongs to a sign-in started in another browser, so the "
            "broker refused it.",
            hint="If someone sent you this link, do not use it. Sign in from the broker itself.",
        )
    if request.args.get("error"):
        raise _provider_error()
    issuer = request.args.get("iss")
    if issuer is not None and issuer.rstrip("/") != _validator().issuer:
        raise SignInFailed(
            "issuer_mismatch", f"The sign-in response came from {issuer!r}, not our provider."
        )
    return attempt


def _exchange(attempt: ClaimedAttempt) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trade the code (with the PKCE verifier) for tokens and validate the ID token."""
    code = request.args.get("code")
    if not code:
        raise SignInFailed("missing_code", "The sign-in response carried no authorization code.")
    validator = _validator()
    try:
        token = _oauth_client().fetch_token(
            validator.metadata()["token_endpoint"],
            grant_type="authorization_code",
            code=code,
            code_verifier=attempt.code_verifier,
        )
    except Exception as exc:
        current_app.logger.warning("token exchange failed: %s", type(exc).__name__)
        raise SignInFailed(
            "token_exchange_failed",
            "The identity provider did not accept the sign-in code.",
        ) from exc
    id_token = token.get("id_token") if isinstance(token, dict) else None
    if not isinstance(id_token, str):
        raise SignInFailed("invalid_id_token", "The identity provider returned no ID token.")
    try:
        return validator.validate(id_token, nonce=attempt.nonce), dict(token)
    except InvalidIdToken as exc:
        raise SignInFailed("invalid_id_token", exc.message) from exc


def _check_granted_scope(token: dict[str, Any]) -> None:
    """Refuse a sign-in where the provider granted fewer scopes than the broker asked for.

    Someone who edits the sign-in URL's `scope` (dropping `email` or `groups`) gets an ID token
    without those claims; the claim checks refuse that too, this names the cause.
    """
    granted = token.get("scope")
    if not isinstance(granted, str):
        return  # the provider granted exactly what was asked (RFC 6749 5.1)
    wanted = set(str(setting("OIDC_SCOPES")).split()) - OPTIONAL_SCOPES
    missing = sorted(wanted - set(granted.split()))
    if missing:
        raise SignInFailed(
            "scope_not_granted",
            f"The identity provider did not grant the scope(s) {', '.join(missing)} the broker "
            "asks for, so it cannot check who you are.",
            hint="Start again from the broker's sign-in page without editing the sign-in link.",
        )


def _provider_error() -> SignInFailed:
    error = request.args.get("error", "")[:64]
    return SignInFailed(
        "provider_error",
        f"The identity provider did not sign you in ({error or 'no reason given'}).",
    )


# -- collaborators ------------------------------------------------------------------------------


def _validator() -> IdTokenValidator:
    validator = services().id_tokens
    if validator is None:
        raise ServiceUnavailable(
            "Web sign-in is not configured: no identity provider is set.",
            hint="An operator sets BROKER_OIDC_ISSUER and BROKER_OIDC_CLIENT_ID.",
        )
    return validator


def _oauth_client() -> OAuth2Session:
    secret = current_app.config.get("OIDC_CLIENT_SECRET")
    return OAuth2Session(
        client_id=current_app.config["OIDC_CLIENT_ID"],
        client_secret=secret,
        token_endpoint_auth_method="client_secret_basic" if secret else "none",
        scope=str(setting("OIDC_SCOPES")),
        redirect_uri=external_url(CALLBACK_PATH),
        code_challenge_method="S256",
        default_timeout=10,
    )


def _end_session_endpoint() -> str | None:
    validator = services().id_tokens
    if validator is None:
        return None
    try:
        endpoint = validator.metadata().get("end_session_endpoint")
    except ServiceUnavailable:
        return None  # the broker session is over either way
    return endpoint if isinstance(endpoint, str) and endpoint else None


def external_url(path: str) -> str:
    """An absolute URL of this broker (BASE_URL when set, else the request's host)."""
    base = setting("BASE_URL") or request.host_url
    return str(base).rstrip("/") + path


def _audit(actor: str, event: NewEvent) -> None:
    meta = web_meta()
    context = EventContext(
        actor=actor,
        ip=meta.ip,
        user_agent=meta.user_agent,
        client="web",
        policy_version=get_policy().version,
    )
    with get_database().session() as session:
        AuditLog().append(session, context, event)


def _audit_failure(reason: str, message: str, *, actor: str = "anonymous") -> None:
    _audit(
        actor,
        NewEvent(
            "auth.sign_in_failed",
            target=str(current_app.config.get("OIDC_ISSUER") or ""),
            decision="deny",
            reason=message,
            details={"code": reason},
        ),
    )
