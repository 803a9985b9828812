"""Fresh claims: ask the provider again what it says about a person, without a new sign-in.

At sign-in the broker keeps the provider's access token and refresh token (if it gave one),
encrypted with a key derived from SECRET_KEY. When a person's claims pass the freshness bound,
`ClaimsRefresher.refresh` asks the provider's userinfo endpoint (while the access token lives),
else redeems the refresh token and validates the new ID token. A provider that answers with a
different subject, or not at all, means no refresh: the person must sign in again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from cryptography.fernet import Fernet, InvalidToken

from broker.auth.idtoken import IdTokenValidator, InvalidIdToken

log = logging.getLogger(__name__)

Post = Callable[..., requests.Response]
Get = Callable[..., requests.Response]


class TokenCipher:
    """Encrypts the provider's tokens at rest (Fernet, key derived from SECRET_KEY)."""

    def __init__(self, secret_key: str) -> None:
        digest = hashlib.sha256(b"broker/idp-tokens\0" + secret_key.encode("utf-8")).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, tokens: dict[str, Any]) -> str:
        """The encrypted form of `tokens`."""
        return self._fernet.encrypt(json.dumps(tokens).encode("utf-8")).decode("ascii")

    def open(self, sealed: str | None) -> dict[str, Any]:
        """The tokens, or {} when there are none or they were sealed under another key."""
        if not sealed:
            return {}
        try:
            value = json.loads(self._fernet.decrypt(sealed.encode("ascii")))
        except (InvalidToken, ValueError):
            return {}
        return value if isinstance(value, dict) else {}


def provider_tokens(token_response: dict[str, Any], now: datetime) -> dict[str, Any]:
    """What to keep from a token endpoint response: access token, its expiry, refresh token."""
    kept: dict[str, Any] = {}
    access = token_response.get("access_token")
    if isinstance(access, str):
        kept["access_token"] = access
        expires_in = token_response.get("expires_in")
        seconds = int(expires_in) if isinstance(expires_in, int | float | str) else 300
        kept["expires_at"] = (now + timedelta(seconds=max(0, seconds - 30))).isoformat()
    refresh = token_response.get("refresh_token")
    if isinstance(refresh, str):
        kept["refresh_token"] = refresh
    return kept


@dataclass(frozen=True)
class Refreshed:
    """The provider's current claims about a person, and the tokens to keep for next time."""

    claims: dict[str, Any]
    tokens: dict[str, Any]


class ClaimsRefresher:
    """Re-reads a person's claims from the provider (userinfo, then refresh token)."""

    def __init__(
        self,
        validator: IdTokenValidator,
        client_id: str,
        client_secret: str | None,
        *,
        post: Post = requests.post,
        get: Get = requests.get,
        timeout: float = 5.0,
    ) -> None:
        self.validator = validator
        self.client_id = client_id
        self.client_secret = client_secret
        self._post = post
        self._get = get
        self.timeout = timeout

    def refresh(self, subject: str, tokens: dict[str, Any], now: datetime) -> Refreshed | None:
        """The provider's claims about `subject` now, or None when it cannot say."""
        try:
            access = tokens.get("access_token")
            expires_at = tokens.get("expires_at")
            if isinstance(access, str) and isinstance(expires_at, str):
                if datetime.fromisoformat(expires_at) > now:
                    claims = self._userinfo(access)
                    if claims is not None and claims.get("sub") == subject:
                        return Refreshed(claims, tokens)
            refresh_token = tokens.get("refresh_token")
            if isinstance(refresh_token, str):
                return self._redeem(subject, refresh_token, now)
        except (requests.RequestException, ValueError, InvalidIdToken) as exc:
            log.warning("claims refresh failed: %s", type(exc).__name__)
        return None

    def _userinfo(self, access_token: str) -> dict[str, Any] | None:
        endpoint = self.validator.metadata().get("userinfo_endpoint")
        if not isinstance(endpoint, str):
            return None
        response = self._get(
            endpoint, headers={"Authorization": f"Bearer {access_token}"}, timeout=self.timeout
        )
        if response.status_code != 200:
            return None
        body = response.json()
        return body if isinstance(body, dict) else None

    def _redeem(self, subject: str, refresh_token: str, now: datetime) -> Refreshed | None:
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        auth: tuple[str, str] | None = None
        if self.client_secret:
            auth = (self.client_id, self.client_secret)
        else:
            data["client_id"] = self.client_id
        response = self._post(
            self.validator.metadata()["token_endpoint"], data=data, auth=auth, timeout=self.timeout
        )
        if response.status_code != 200:
            return None
        body = response.json()
        if not isinstance(body, dict):
            return None
        kept = provider_tokens(body, now)
        kept.setdefault("refresh_token", refresh_token)
        id_token = body.get("id_token")
        if isinstance(id_token, str):
            claims = self.validator.validate(id_token)
            userinfo = self._userinfo(kept["access_token"]) if "access_token" in kept else None
            if userinfo is not None and userinfo.get("sub") == claims.get("sub"):
                claims = {**claims, **userinfo}  # userinfo may carry claims the ID token leaves out
        elif "access_token" in kept:
            found = self._userinfo(kept["access_token"])
            if found is None:
                return None
            claims = found
        else:
            return None
        if claims.get("sub") != subject:
            log.warning("claims refresh answered for another subject; ignored")
            return None
        return Refreshed(claims, kept)
