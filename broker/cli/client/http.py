"""Talking to the broker: one requests session, timeouts, the CLI's headers, clear errors."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from broker.cli.client.errors import ApiError, ClientError, NotSignedIn, Unreachable

if TYPE_CHECKING:
    import requests

CLIENT_ID = "broker-cli"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TIMEOUT = (5.0, 60.0)  # connect, read: issuing waits on AWS STS, which may retry


def user_agent() -> str:
    """`broker-cli/<version> (<os>; python <x.y>)`: shown to the person approving a login."""
    try:
        from importlib.metadata import version

        ours = version("broker")
    except Exception:  # noqa: BLE001 - running from a source tree
        ours = "dev"
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return f"broker-cli/{ours} ({platform.system()}; python {python})"


def normalize_url(url: str) -> str:
    """A broker base URL without a trailing slash; https, or http only on loopback."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(
            f"{url!r} is not a broker URL.", hint="Give one like https://broker.example.com."
        )
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ClientError(
            f"{url} is plain http: your sign-in token would cross the network unencrypted.",
            hint="Use the broker's https:// address.",
        )
    return url


@dataclass(frozen=True)
class Answer:
    """A JSON answer from the broker and its HTTP status."""

    status: int
    body: dict[str, Any]


class BrokerClient:
    """HTTP calls to one broker, optionally with a bearer token."""

    def __init__(
        self, url: str, token: str | None = None, *, session: requests.Session | None = None
    ) -> None:
        import requests  # here, not at import: `broker --help` must start fast

        self.url = url
        self.token = token
        self.http = session or requests.Session()

    def _headers(self) -> dict[str, str]:
        headers = {
            "X-Broker-Client": "cli",
            "User-Agent": user_agent(),
            "Accept": "application/json",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        import requests

        try:
            return self.http.request(
                method, self.url + path, headers=self._headers(), timeout=TIMEOUT, **kwargs
            )
        except requests.Timeout as exc:
            raise Unreachable(
                f"The broker at {self.url} did not answer in time.",
                hint="Try again; if it keeps happening, check your network or VPN.",
            ) from exc
        except requests.RequestException as exc:
            raise Unreachable(
                f"Cannot reach the broker at {self.url} ({type(exc).__name__}).",
                hint="Check your network or VPN, and the address "
                "(`broker login --url URL` changes it).",
            ) from exc

    # -- OAuth (device flow) ------------------------------------------------------------------

    def oauth(self, path: str, form: dict[str, str]) -> Answer:
        """POST a form to an /oauth endpoint; RFC 6749 errors come back, not raised."""
        response = self._send("POST", path, data=form)
        body = _json(response)
        if body is None:
            raise self._unexpected(response)
        return Answer(response.status_code, body)

    # -- the JSON API ---------------------------------------------------------------------------

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        """Call /api/v1; a 2xx answer is returned, anything else raised as a ClientError."""
        response = self._send(method, f"/api/v1{path}", json=body)
        data = _json(response)
        if data is None:
            raise self._unexpected(response)
        if response.status_code < 400:
            return Answer(response.status_code, data)
        raise self._api_error(response.status_code, data)

    def _api_error(self, status: int, data: dict[str, Any]) -> ClientError:
        code = str(data.get("code", ""))
        message = str(data.get("message") or f"The broker refused (HTTP {status}).")
        hint = data.get("hint")
        if status == 401:
            return NotSignedIn(
                f"The broker did not accept your sign-in: {message}",
                hint="Run `broker login` to sign in again.",
                code=code,
            )
        if code == "approval_required":
            return ApiError(message, hint=hint, code=code, status=status)
        if code == "policy_denied":
            return ApiError(
                f"Denied by policy: {message}",
                hint=hint or "`broker roles` lists what you may use, and why not the rest.",
                code=code,
                status=status,
            )
        if status >= 500 and not hint:
            hint = "Nothing was issued. Try again shortly; if it persists, tell the platform team."
        return ApiError(message, hint=str(hint) if hint else None, code=code, status=status)

    def _unexpected(self, response: requests.Response) -> ClientError:
        return ApiError(
            f"{self.url} answered HTTP {response.status_code} with something that is not the "
            "broker's JSON (a proxy or a wrong address?).",
            hint="Check the address with `broker whoami`; `broker login --url URL` changes it.",
            status=response.status_code,
        )


def _json(response: requests.Response) -> dict[str, Any] | None:
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
