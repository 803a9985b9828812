"""INSECURE development stand-in for AWS's console federation endpoint, for `broker dev` only.

The broker's console link (`broker.console.console_url`) calls the federation endpoint's
`getSigninToken` with temporary credentials and builds an `Action=login` URL from the token.
In dev mode there is no AWS console, so `broker dev` serves this endpoint on loopback and points
`BROKER_FEDERATION_ENDPOINT` at it: the broker runs its normal console code unchanged.

Like the real endpoint it checks the credentials (with STS `GetCallerIdentity` on the dev AWS
endpoint), refuses a `SessionDuration` outside 900–43,200 s, and hands out a sign-in token
that works for 15 minutes; `login` shows a page saying "AWS console (dev)" and which role the
session would be. Secrets never reach a log: the request log is off.
"""

from __future__ import annotations

import html
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

SIGNIN_TOKEN_SECONDS = 15 * 60
MIN_SESSION_SECONDS, MAX_SESSION_SECONDS = 900, 43_200
PATH = "/federation"

# Who a set of credentials is: (access key id, secret, token) -> the caller's ARN, or None.
WhoIs = Callable[[str, str, str], "str | None"]


@dataclass(frozen=True)
class _SignIn:
    arn: str
    session_seconds: int
    usable_until: float


class _Quiet(WSGIRequestHandler):
    """No request log: a getSigninToken URL carries the secret key and session token."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class DevFederationEndpoint:
    """The dev federation endpoint: a Flask app served on loopback in a thread."""

    who_is: WhoIs
    url: str = ""
    clock: Callable[[], float] = time.time
    _tokens: dict[str, _SignIn] = field(default_factory=dict)
    _server: BaseWSGIServer | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a background thread; return the endpoint URL (for FEDERATION_ENDPOINT)."""
        self._server = make_server(host, port, self.app(), threaded=True, request_handler=_Quiet)
        self.url = f"http://{host}:{self._server.server_port}{PATH}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def app(self) -> Flask:
        """The endpoint's WSGI app."""
        app = Flask("broker-dev-federation")
        app.add_url_rule(PATH, view_func=self._federation)
        return app

    def _federation(self) -> Response | tuple[Response, int] | tuple[str, int]:
        action = request.args.get("Action", "")
        if action == "getSigninToken":
            return self._get_signin_token()
        if action == "login":
            return self._login()
        return _page("Unknown action", _p("Expected Action=getSigninToken or Action=login.")), 400

    def _get_signin_token(self) -> Response | tuple[Response, int]:
        try:
            session = json.loads(request.args.get("Session", ""))
            key, secret, token = (
                str(session["sessionId"]),
                str(session["sessionKey"]),
                str(session["sessionToken"]),
            )
        except (ValueError, KeyError, TypeError):
            return jsonify(message="Session must be JSON with sessionId/Key/Token"), 400
        duration_text = request.args.get("SessionDuration", str(MAX_SESSION_SECONDS))
        if not duration_text.isdigit() or not (
            MIN_SESSION_SECONDS <= int(duration_text) <= MAX_SESSION_SECONDS
        ):
            return jsonify(message="SessionDuration must be 900 to 43200 seconds"), 400
        arn = self.who_is(key, secret, token)
        if arn is None or ":assumed-role/" not in arn:
            return jsonify(message="The credentials are not those of an assumed role"), 403
        signin = secrets.token_urlsafe(32)
        now = self.clock()
        self._tokens = {k: v for k, v in self._tokens.items() if v.usable_until > now}
        self._tokens[signin] = _SignIn(arn, int(duration_text), now + SIGNIN_TOKEN_SECONDS)
        return jsonify(SigninToken=signin)

    def _login(self) -> tuple[str, int]:
        found = self._tokens.get(request.args.get("SigninToken", ""))
        if found is None or found.usable_until <= self.clock():
            return _page(
                "Sign-in link expired",
                _p(
                    "This console link is unknown or older than 15 minutes. Get a fresh one "
                    "from the broker."
                ),
            ), 400
        issuer = request.args.get("Issuer", "")
        back = (
            f'<p><a href="{html.escape(issuer)}">Back to the broker</a></p>'
            if issuer.startswith(("http://", "https://"))
            else ""
        )
        destination = html.escape(request.args.get("Destination", ""))
        return _page(
            "AWS console (dev)",
            f"<p>Signed in as <code>{html.escape(found.arn)}</code> for up to "
            f"{found.session_seconds // 60} minutes.</p>"
            "<p>This is the dev stand-in for the AWS console: in production the same link "
            f"opens <code>{destination}</code>.</p>{back}",
        ), 200


def sts_who_is(endpoint_url: str, region: str) -> WhoIs:
    """A `who_is` asking STS `GetCallerIdentity` at `endpoint_url` (the dev AWS endpoint)."""

    def who_is(key: str, secret: str, token: str) -> str | None:
        from broker.aws import make_client

        sts = make_client(
            "sts",
            region=region,
            endpoint_url=endpoint_url,
            timeout=10,
            access_key_id=key,
            secret_access_key=secret,
            session_token=token,
        )
        try:
            return str(sts.get_caller_identity()["Arn"])
        except Exception:  # any refusal means: not valid credentials
            return None

    return who_is


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _page(title: str, body_html: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title></head><body><main>"
        f"<h1>{html.escape(title)}</h1>{body_html}</main></body></html>"
    )
