"""Server-side browser sessions: the cookie carries only a random id, the database the rest.

The cookie value is 256 random bits; the database keeps only its SHA-256, so a read of the
`web_sessions` table does not let anyone take a session over. A session ends at whichever
comes first: logout, `SESSION_IDLE_SECONDS` without a request, `SESSION_ABSOLUTE_SECONDS`
after sign-in. Every request re-resolves the person from their principal row (claims refreshed
from the provider when stale), so a person cut off by an admin loses their browser session on
their next click, and one whose claims cannot be refreshed is sent to sign in again.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlencode

from flask import Response, current_app, g, redirect, request
from sqlalchemy import update
from werkzeug.wrappers import Response as BaseResponse

from broker.auth.identity import ClaimsRefused, StaleClaims, auth_context
from broker.auth.signin import caller_for
from broker.config import Settings
from broker.db import get_database
from broker.errors import Forbidden
from broker.grants import Caller, RequestMeta
from broker.models import Principal, WebSession, utcnow
from broker.services import grant_service

P = ParamSpec("P")
R = TypeVar("R")

SESSION_COOKIE = "broker_session"
# Claims kept with the session: enough to rebuild the identity, nothing single-use.
_DROPPED_CLAIMS = frozenset({"nonce", "at_hash", "c_hash", "s_hash"})
# last_seen_at is written at most this often, to spare the database a write per click.
_TOUCH_EVERY = timedelta(seconds=30)


def setting(name: str) -> Any:
    """A setting from the app config, or its documented default."""
    if name in current_app.config and current_app.config[name] is not None:
        return current_app.config[name]
    return Settings.model_fields[name].default


def is_https() -> bool:
    """True when the broker is served over https (BASE_URL decides when it is set)."""
    base = setting("BASE_URL")
    if base:
        return str(base).startswith("https://")
    return request.is_secure


def cookie_name(base: str) -> str:
    """`__Host-<base>` on https (host-only, path /, Secure), the plain name on http loopback."""
    return f"__Host-{base}" if is_https() else base


def set_cookie(response: BaseResponse, base: str, value: str, *, max_age: int) -> None:
    """Set one of the broker's cookies with the flags every broker cookie carries."""
    response.set_cookie(
        cookie_name(base),
        value,
        max_age=max_age,
        path="/",
        secure=is_https(),
        httponly=True,
        samesite="Lax",
    )


def delete_cookie(response: BaseResponse, base: str) -> None:
    """Remove one of the broker's cookies."""
    response.delete_cookie(
        cookie_name(base), path="/", secure=is_https(), httponly=True, samesite="Lax"
    )


def hash_secret(value: str) -> str:
    """SHA-256 hex of a random value handed to a browser (what the database keeps)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ActiveSession:
    """The browser session of the current request."""

    id_hash: str
    principal_id: str
    claims: dict[str, Any]
    csrf_token: str
    expires_at: datetime


def start_session(principal_id: str, claims: dict[str, Any], *, now: datetime) -> tuple[str, str]:
    """Record a new session; return (cookie value, id hash). The caller sets the cookie."""
    value = secrets.token_urlsafe(32)
    id_hash = hash_secret(value)
    kept = {k: v for k, v in claims.items() if k not in _DROPPED_CLAIMS}
    with get_database().session() as session:
        session.add(
            WebSession(
                id_hash=id_hash,
                principal_id=principal_id,
                claims=kept,
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                last_seen_at=now,
                expires_at=now + timedelta(seconds=int(setting("SESSION_ABSOLUTE_SECONDS"))),
            )
        )
    return value, id_hash


def end_session(id_hash: str, *, now: datetime) -> bool:
    """End a session (logout, cut-off, new sign-in); True when it was still open."""
    with get_database().session() as session:
        result = session.execute(
            update(WebSession)
            .where(WebSession.id_hash == id_hash, WebSession.ended_at.is_(None))
            .values(ended_at=now)
        )
        return bool(getattr(result, "rowcount", 0))


def mark_signed_out(principal_id: str, *, now: datetime) -> None:
    """From now on, ID tokens issued to this person before `now` are refused as API bearers."""
    with get_database().session() as session:
        session.execute(
            update(Principal).where(Principal.id == principal_id).values(signed_out_at=now)
        )


def web_meta() -> RequestMeta:
    """Where the current browser request came from (for audit events)."""
    return RequestMeta(
        client="web", ip=request.remote_addr, user_agent=request.headers.get("User-Agent")
    )


def current_session() -> ActiveSession | None:
    """The live session named by the request's cookie, or None (cached per request)."""
    if "web_session" in g:
        found: ActiveSession | None = g.web_session
        return found
    g.web_session = _load_session()
    return g.web_session  # type: ignore[no-any-return]


def _load_session() -> ActiveSession | None:
    value = request.cookies.get(cookie_name(SESSION_COOKIE))
    if not value or len(value) > 128:
        return None
    id_hash = hash_secret(value)
    now = utcnow()
    idle = timedelta(seconds=int(setting("SESSION_IDLE_SECONDS")))
    with get_database().session() as session:
        row = session.get(WebSession, id_hash)
        if row is None or row.ended_at is not None:
            return None
        if row.expires_at <= now or row.last_seen_at + idle <= now:
            row.ended_at = now
            return None
        if now - row.last_seen_at >= _TOUCH_EVERY:
            row.last_seen_at = now
        return ActiveSession(
            row.id_hash, row.principal_id, dict(row.claims), row.csrf_token, row.expires_at
        )


def current_caller() -> Caller | None:
    """The signed-in person, re-resolved against the policy now; None when signed out.

    A person who has been cut off has their session ended here and gets Forbidden.
    """
    if "web_caller" in g:
        cached: Caller | None = g.web_caller
        return cached
    active = current_session()
    caller = None
    if active is not None:
        try:
            caller = caller_for(
                grant_service(), active.principal_id, auth_context(active.claims), web_meta()
            )
        except Forbidden:
            end_session(active.id_hash, now=utcnow())
            g.web_session = None
            raise
        except (StaleClaims, ClaimsRefused):
            # The provider can no longer vouch for what we know of this person: sign in again.
            end_session(active.id_hash, now=utcnow())
            g.web_session = None
            caller = None
    g.web_caller = caller
    return caller


def csrf_token() -> str:
    """The CSRF token of the current session ('' when signed out)."""
    active = current_session()
    return active.csrf_token if active else ""


def csrf_valid(submitted: str | None) -> bool:
    """True when `submitted` is this session's CSRF token."""
    active = current_session()
    if active is None or not submitted:
        return False
    return hmac.compare_digest(active.csrf_token.encode(), submitted.encode())


def login_redirect() -> Response:
    """Send the browser to sign in, coming back to this page afterwards."""
    target = request.full_path if request.query_string else request.path
    return redirect("/login?" + urlencode({"next": target}))  # type: ignore[return-value]


def login_required(view: Callable[P, R]) -> Callable[P, R | Response]:
    """Run the view for a signed-in person (the Caller is in `g.web_caller`); else sign in."""

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        if current_caller() is None:
            return login_redirect()
        return view(*args, **kwargs)

    return wrapper


def require_caller() -> Caller:
    """The signed-in Caller (use inside `login_required` views)."""
    caller = current_caller()
    if caller is None:  # pragma: no cover - login_required ran first
        raise Forbidden("Sign in first.")
    return caller
