"""Full validation of OpenID Connect ID tokens from the configured issuer.

Checks: algorithm on an asymmetric allow-list (never `none` or HS*), signature with the issuer's
published keys (refetched for an unknown `kid` at most once a minute), exact `iss`, `aud`
containing the client id, `azp` when there are several audiences, `exp` and `iat` with a small
leeway, and the nonce when the caller expects one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import requests
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker.errors import ServiceUnavailable, Unauthenticated

HttpGet = Callable[[str], Any]
FORBIDDEN_ALGS = ("none", "HS256", "HS384", "HS512")


class InvalidIdToken(Unauthenticated):
    """The ID token failed validation."""

    code = "invalid_token"


def _http_get_json(url: str) -> Any:
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return response.json()


class IdTokenValidator:
    """Validates ID tokens of one issuer for one audience (client id)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        allowed_algs: Collection[str] = ("RS256", "PS256", "ES256", "EdDSA"),
        http_get: HttpGet = _http_get_json,
        clock: Callable[[], float] = time.time,
        leeway: int = 60,
        jwks_ttl: float = 300.0,
        jwks_refetch_seconds: float = 60.0,
        max_age_seconds: int = 3600,
    ) -> None:
        bad = [a for a in allowed_algs if a in FORBIDDEN_ALGS]
        if bad:
            raise ValueError(f"algorithms {bad} may not be allowed for ID tokens")
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.allowed_algs = tuple(allowed_algs)
        self._http_get = http_get
        self._clock = clock
        self.leeway = leeway
        self._jwks_ttl = jwks_ttl
        self._refetch_every = jwks_refetch_seconds
        self.max_age_seconds = max_age_seconds
        self._lock = threading.Lock()  # guards the fields below, never held across a fetch
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._last_fetch_at: float | None = None

    def metadata(self) -> dict[str, Any]:
        """The issuer's discovery document (fetched once)."""
        if self._metadata is None:
            url = f"{self.issuer}/.well-known/openid-configuration"
            try:
                doc = self._http_get(url)
            except Exception as exc:
                raise ServiceUnavailable(
                    f"The identity provider at {self.issuer} could not be reached ({exc}).",
                    hint="Try again shortly; if it persists, check BROKER_OIDC_ISSUER.",
                ) from exc
            if doc.get("issuer", "").rstrip("/") != self.issuer:
                raise ServiceUnavailable(
                    f"The identity provider's discovery document names issuer {doc.get('issuer')!r}"
                    f", not {self.issuer!r}; refusing to trust it."
                )
            self._metadata = doc
        return self._metadata

    def _key_set(self, *, unknown_kid: bool = False) -> KeySet:
        """The issuer's keys: fetched when missing or older than the TTL, and for an unknown
        `kid` at most once per `jwks_refetch_seconds` (a flood of forged kids costs one fetch)."""
        now = self._clock()
        with self._lock:
            keys = self._keys
            due = keys is None or now - self._keys_at > self._jwks_ttl
            if unknown_kid and not due:
                last = self._last_fetch_at
                due = last is None or now - last >= self._refetch_every
            if not due:
                assert keys is not None  # noqa: S101 - due is True whenever keys is None
                return keys
            self._last_fetch_at = now
        fetched = KeySet.import_key_set(self._http_get(self.metadata()["jwks_uri"]))
        with self._lock:
            self._keys, self._keys_at = fetched, self._clock()
        return fetched

    def validate(self, token: str, *, nonce: str | None = None) -> dict[str, Any]:
        """Return the token's claims, or raise InvalidIdToken saying what was wrong."""
        header = _peek_header(token)
        alg = header.get("alg")
        if alg not in self.allowed_algs:
            raise InvalidIdToken(f"ID token algorithm {alg!r} is not allowed.")
        kid = header.get("kid")
        keys = self._key_set()
        if kid is not None and not _has_kid(keys, kid):
            keys = self._key_set(unknown_kid=True)
            if not _has_kid(keys, kid):
                raise InvalidIdToken(f"ID token signed with an unknown key (kid {kid!r}).")
        try:
            decoded = jwt.decode(token, keys, algorithms=self.allowed_algs)
        except JoseError as exc:
            raise InvalidIdToken(f"ID token signature is not valid ({exc.error}).") from exc
        claims = dict(decoded.claims)
        self._check_claims(claims, nonce)
        return claims

    def validate_bearer(self, token: str) -> dict[str, Any]:
        """Validate an ID token presented as an API bearer: also at most `max_age_seconds` old
        (from `iat`) and, when `azp` is present, issued to this client."""
        claims = self.validate(token)
        age = self._clock() - float(claims["iat"])
        if age > self.max_age_seconds:
            raise InvalidIdToken(
                f"This ID token was issued {int(age // 60)} minutes ago; the broker accepts ID "
                f"tokens as bearers for {self.max_age_seconds // 60} minutes.",
            )
        if "azp" in claims and claims["azp"] != self.audience:
            raise InvalidIdToken("This ID token was issued to another client (azp).")
        return claims

    def _check_claims(self, claims: dict[str, Any], nonce: str | None) -> None:
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
        )
        if claims.get("iss", "") != self.issuer and str(claims.get("iss", "")).rstrip("/") == (
            self.issuer
        ):
            claims["iss"] = self.issuer  # tolerate only a trailing slash difference
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidIdToken(_claim_message(exc)) from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.audience:
            raise InvalidIdToken("ID token has several audiences but azp is not this client.")
        if nonce is not None and claims.get("nonce") != nonce:
            raise InvalidIdToken("ID token nonce does not match this sign-in; start again.")


def _peek_header(token: str) -> dict[str, Any]:
    try:
        header = jws.extract_compact(token.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeError) as exc:
        raise InvalidIdToken("Not a well-formed JWT.") from exc
    if not isinstance(header, dict):
        raise InvalidIdToken("Not a well-formed JWT.")
    return json.loads(json.dumps(header))  # type: ignore[no-any-return]


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


def _claim_message(exc: JoseError) -> str:
    name = exc.__class__.__name__
    if name == "ExpiredTokenError":
        return "ID token has expired; sign in again."
    if name == "MissingClaimError":
        return f"ID token lacks required claim(s): {exc.description}."
    return f"ID token claim is not valid: {exc.description or exc.error}."
