"""Browser-facing defences: security headers, CSRF, rate limits and safe `next=` targets.

- Every response carries a strict CSP (no inline script or style), `frame-ancestors 'none'`,
  `nosniff`, `Referrer-Policy: no-referrer`, and HSTS when served over https.
- Every POST outside `/api/` and `/oauth/` (bearer-token surfaces, not cookie ones) must carry
  the session's CSRF token, and must not come from another site (Origin / Sec-Fetch-Site).
- Rate limits are fixed windows counted in the database, so they hold across every worker
  (:mod:`broker.ratelimit`); issuance counts its limit inside its own transaction.
- `next=` is accepted only as a same-origin relative path.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from flask import Flask, Response, request

from broker import ratelimit
from broker.auth.websession import csrf_valid, is_https, setting
from broker.db import get_database
from broker.errors import BadRequest, Forbidden
from broker.ratelimit import RateLimit
from broker.ratelimit import RateLimited as RateLimited  # raised here, caught by callers

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_CSRF_EXEMPT = ("/api/", "/oauth/")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CsrfRefused(Forbidden):
    """A state-changing form came without this session's token, or from another site."""

    code = "csrf_refused"


def init_app(app: Flask) -> None:
    """Install the CSRF check and the security headers."""
    app.before_request(_check_csrf)
    app.after_request(_security_headers)


# -- headers ------------------------------------------------------------------------------------


def content_security_policy() -> str:
    """The CSP: only our own scripts and styles; forms may post to us and to the issuer."""
    form_action = "'self'"
    issuer = setting("OIDC_ISSUER")
    if issuer:
        parts = urlsplit(str(issuer))
        form_action += f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"frame-ancestors 'none'; base-uri 'none'; form-action {form_action}; object-src 'none'"
    )


def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", content_security_policy())
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if is_https():
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    return response


# -- CSRF ---------------------------------------------------------------------------------------


def _check_csrf() -> None:
    if request.method in _SAFE_METHODS or request.path.startswith(_CSRF_EXEMPT):
        return
    if _cross_site():
        raise CsrfRefused(
            "This form was sent from another site, so the broker refused it.",
            hint="Use the broker's own pages; if you followed a link here, it was not ours.",
        )
    submitted = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not csrf_valid(submitted):
        raise CsrfRefused(
            "This form has expired or did not come from a broker page, so nothing was done.",
            hint="Go back, reload the page and try again; sign in again if your session ended.",
        )


def _cross_site() -> bool:
    # Browsers say where a request came from in Sec-Fetch-Site; older ones only in Origin.
    # With `Referrer-Policy: no-referrer` Chromium sends `Origin: null` on our own forms, so
    # "null" decides nothing (the CSRF token still must match).
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site:
        return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return False
    theirs = urlsplit(origin)
    own = {urlsplit(request.host_url)[:2]}
    if setting("BASE_URL"):
        own.add(urlsplit(str(setting("BASE_URL")))[:2])
    return (theirs.scheme, theirs.netloc) not in own


# -- rate limits --------------------------------------------------------------------------------


def rate_limit(key: str, *, limit: int, window_seconds: int = 60) -> None:
    """Count one hit for `key` in the current window (a transaction of its own); RateLimited
    past `limit`."""
    with get_database().session() as session:
        ratelimit.check(session, RateLimit(key, limit, window_seconds))


def limit_sign_in() -> None:
    """Rate-limit sign-in attempts per source address."""
    rate_limit(f"signin:{request.remote_addr}", limit=int(setting("RATE_LIMIT_SIGNIN_PER_MINUTE")))


def issue_limit(principal_id: str) -> RateLimit:
    """The per-person limit on credential issuance (counted inside the issuance's transaction
    by :meth:`GrantService.issue`)."""
    return RateLimit(f"issue:{principal_id}", int(setting("RATE_LIMIT_ISSUE_PER_MINUTE")))


def limit_issue(principal_id: str) -> None:
    """Rate-limit credential issuance per person, in a transaction of its own."""
    limit = issue_limit(principal_id)
    rate_limit(limit.key, limit=limit.limit, window_seconds=limit.window_seconds)


# -- next= --------------------------------------------------------------------------------------


def is_safe_next(value: str) -> bool:
    """True only for a same-origin relative path (`/…`, never `//…`, a scheme or a backslash).

    The value is checked as given and after each round of percent-decoding, so an encoded
    `%2F%2Fevil.example` is judged as the `//evil.example` a browser may end up following.
    """
    candidate = value
    for _ in range(4):
        if not candidate.startswith("/") or candidate.startswith("//"):
            return False
        if "\\" in candidate or _CONTROL.search(candidate):
            return False
        parts = urlsplit(candidate)
        if parts.scheme or parts.netloc:
            return False
        decoded = unquote(candidate)
        if decoded == candidate:
            return len(value) <= 2048
        candidate = decoded
    return False


def safe_next(value: str | None) -> str:
    """The `next=` target to use: `/` when absent; BadRequest when it leaves the broker."""
    if value is None or value == "":
        return "/"
    if not is_safe_next(value):
        raise BadRequest(
            "That sign-in link would send you to another site afterwards, so the broker "
            "refused it.",
            hint="Open the broker from its own address and sign in from there.",
        )
    return value
