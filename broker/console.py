"""AWS console sign-in links from temporary credentials (the federation `getSigninToken` flow).

The federation endpoint turns credentials into a sign-in token (valid 15 minutes); the
`Action=login` URL built from it opens the console as the assumed role. The console session
must not outlive the credentials, so `SessionDuration` is capped by what is left of them.
Used by the web UI and the CLI alike; knows nothing of Flask.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import requests

from broker.errors import BadRequest, UpstreamError
from broker.sts import IssuedCredentials

HttpGet = Callable[[str], Any]
MIN_CONSOLE_SECONDS = 900  # the federation endpoint refuses SessionDuration below 15 minutes
MAX_CONSOLE_SECONDS = 43_200


def http_get_json(url: str) -> Any:
    """GET a URL and parse its JSON (the default transport)."""
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return response.json()


def seconds_left(credentials: IssuedCredentials, now: datetime) -> int:
    """Whole seconds until the credentials expire (0 when they already have)."""
    return max(0, int((credentials.expiration - now).total_seconds()))


def console_url(
    credentials: IssuedCredentials,
    *,
    federation_endpoint: str,
    destination: str,
    issuer_url: str,
    session_duration: int,
    http_get: HttpGet = http_get_json,
) -> str:
    """A console sign-in URL for these credentials, with a session no longer than asked.

    `session_duration` should be what is left of the credentials; above 12 hours it is capped.
    Raises BadRequest when under 15 minutes are left (the console would outlive them) and
    UpstreamError when the federation endpoint refuses.
    """
    if session_duration < MIN_CONSOLE_SECONDS:
        raise BadRequest(
            "These credentials have less than 15 minutes left, too little for a console "
            "session (AWS requires at least 15 minutes).",
            hint="Request fresh credentials and open the console from them.",
        )
    duration = min(session_duration, MAX_CONSOLE_SECONDS)
    session = json.dumps(
        {
            "sessionId": credentials.access_key_id,
            "sessionKey": credentials.secret_access_key,
            "sessionToken": credentials.session_token,
        }
    )
    query = urlencode(
        {"Action": "getSigninToken", "SessionDuration": str(duration), "Session": session}
    )
    try:
        answer = http_get(f"{federation_endpoint}?{query}")
        token = answer["SigninToken"]
    except Exception as exc:
        # The exception text may quote the request URL, which holds the secret: never show it.
        raise UpstreamError(
            f"The AWS federation endpoint did not return a sign-in token ({type(exc).__name__}).",
            hint="Use the credentials from the command line, or try the console link again.",
        ) from None
    if not isinstance(token, str) or not token:
        raise UpstreamError("The AWS federation endpoint returned an empty sign-in token.")
    login = urlencode(
        {
            "Action": "login",
            "Issuer": issuer_url,
            "Destination": destination,
            "SigninToken": token,
        }
    )
    return f"{federation_endpoint}?{login}"
