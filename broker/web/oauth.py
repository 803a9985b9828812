"""The device flow over HTTP: the CLI's OAuth endpoints and the person's `/device` page.

- `POST /oauth/device_authorization` and `POST /oauth/token` (RFC 8628, form-encoded, answering
  RFC 6749 §5.2 JSON errors), `POST /oauth/revoke` (RFC 7009, used by `broker logout`). These are
  bearer surfaces: no cookies, so `web.security` exempts them from CSRF.
- `GET /device` (enter or confirm a code) and `POST /device` (approve or deny): behind web
  sign-in; the POST carries the session's CSRF token, checked by `web.security`.

Entering codes is rate-limited per person and per address (fixed windows in the database).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request

from broker.auth.device import (
    CLIENTS,
    GRANT_TYPE,
    DeviceError,
    DeviceFlow,
    DeviceRequest,
    DeviceSettings,
)
from broker.auth.oidc import external_url
from broker.auth.websession import csrf_token, login_required, require_caller, web_meta
from broker.db import get_database
from broker.errors import BrokerError
from broker.grants import Caller, RequestMeta
from broker.policy_store import get_policy
from broker.web.authn import request_meta
from broker.web.security import RateLimited, rate_limit

bp = Blueprint("oauth", __name__)
EXTENSION = "broker.device"
VERIFICATION_PATH = "/device"


def init_app(app: Flask) -> None:
    """Check the `DEVICE_*` settings (a bad one stops startup) and register the blueprint."""
    app.extensions[EXTENSION] = DeviceSettings.from_config(app.config)
    app.register_blueprint(bp)


def device_settings() -> DeviceSettings:
    """The app's device-flow settings."""
    found: DeviceSettings | None = current_app.extensions.get(EXTENSION)
    return found or DeviceSettings.from_config(current_app.config)


def device_flow() -> DeviceFlow:
    """A DeviceFlow over this app's database and the policy in force."""
    return DeviceFlow(
        get_database(), settings=device_settings(), policy_version=get_policy().version
    )


# -- the CLI's endpoints ------------------------------------------------------------------------


def _oauth_json(body: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _oauth_error(exc: DeviceError, retry_after: int | None = None) -> Response:
    response = _oauth_json(exc.to_dict(), exc.status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _form() -> dict[str, str] | DeviceError:
    """The form-encoded parameters, or invalid_request (RFC 6749 §3.2: form, never JSON)."""
    if request.mimetype != "application/x-www-form-urlencoded":
        return DeviceError(
            "invalid_request", "Send the parameters as application/x-www-form-urlencoded."
        )
    return {key: request.form.get(key, "") for key in request.form}


def _cli_meta() -> RequestMeta:
    return request_meta(client="cli")


@bp.post("/oauth/device_authorization")
def device_authorization() -> Response:
    """Start a device authorization: a device code for the CLI, a user code for the person."""
    form = _form()
    if isinstance(form, DeviceError):
        return _oauth_error(form)
    settings = device_settings()
    try:
        rate_limit(
            f"device-start:ip:{request.remote_addr}",
            limit=settings.starts_per_ip,
            window_seconds=settings.window_seconds,
        )
        started = device_flow().start(form.get("client_id", ""), form.get("scope"), _cli_meta())
    except RateLimited as exc:
        return _oauth_error(DeviceError("slow_down", exc.explain(), status=429), exc.retry_after)
    except DeviceError as exc:
        return _oauth_error(exc)
    except BrokerError as exc:
        return _oauth_error(DeviceError("temporarily_unavailable", exc.explain(), status=503))
    uri = external_url(VERIFICATION_PATH)
    return _oauth_json(
        {
            "device_code": started.device_code,
            "user_code": started.user_code,
            "verification_uri": uri,
            "verification_uri_complete": f"{uri}?user_code={started.user_code}",
            "expires_in": started.expires_in,
            "interval": started.interval,
        }
    )


@bp.post("/oauth/token")
def token() -> Response:
    """Redeem a device code (the only grant this endpoint serves)."""
    form = _form()
    if isinstance(form, DeviceError):
        return _oauth_error(form)
    if form.get("grant_type") != GRANT_TYPE:
        return _oauth_error(
            DeviceError(
                "unsupported_grant_type", f"This endpoint serves only grant_type={GRANT_TYPE}."
            )
        )
    try:
        issued = device_flow().poll(
            form.get("client_id", ""), form.get("device_code", ""), _cli_meta()
        )
    except DeviceError as exc:
        return _oauth_error(exc)
    except BrokerError as exc:
        return _oauth_error(DeviceError("temporarily_unavailable", exc.explain(), status=503))
    return _oauth_json(
        {
            "access_token": issued.access_token,
            "token_type": issued.token_type,
            "expires_in": issued.expires_in,
        }
    )


@bp.post("/oauth/revoke")
def revoke() -> Response:
    """RFC 7009 token revocation for device tokens; 200 whether or not the token was known."""
    form = _form()
    if isinstance(form, DeviceError):
        return _oauth_error(form)
    try:
        device_flow().revoke(form.get("client_id", ""), form.get("token", ""), _cli_meta())
    except DeviceError as exc:
        return _oauth_error(exc)
    except BrokerError as exc:
        return _oauth_error(DeviceError("temporarily_unavailable", exc.explain(), status=503))
    return _oauth_json({})


# -- the person's page --------------------------------------------------------------------------


def _count_attempt(caller: Caller) -> None:
    """One code entry against the person's and the address's limits (RateLimited past them)."""
    settings = device_settings()
    rate_limit(
        f"device-code:person:{caller.principal_id}",
        limit=settings.attempts_per_person,
        window_seconds=settings.window_seconds,
    )
    rate_limit(
        f"device-code:ip:{request.remote_addr}",
        limit=settings.attempts_per_ip,
        window_seconds=settings.window_seconds,
    )


def _page(template: str, status: int = 200, **context: Any) -> Response:
    body = render_template(
        f"device/{template}", csrf_token=csrf_token(), clients=CLIENTS, **context
    )
    response = Response(body, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get(VERIFICATION_PATH)
@login_required
def device() -> Response:
    """Enter a code, or (with `?user_code=`) see what is asking before approving it."""
    entered = request.args.get("user_code", "").strip()
    if not entered:
        return _page("enter.html")
    caller = require_caller()
    try:
        _count_attempt(caller)
        found = device_flow().lookup(entered, caller, web_meta())
    except BrokerError as exc:
        return _page("enter.html", exc.status, error=exc, entered=entered[:32])
    return _page("confirm.html", request_info=_describe(found))


@bp.post(VERIFICATION_PATH)
@login_required
def decide() -> Response:
    """Approve or deny the request behind a code."""
    caller = require_caller()
    entered = request.form.get("user_code", "")
    verdict = request.form.get("decision", "")
    if verdict not in ("approve", "deny"):
        return _page("enter.html", 400, error=_NoVerdict(), entered=entered[:32])
    flow = device_flow()
    try:
        _count_attempt(caller)
        decide_with = flow.approve if verdict == "approve" else flow.deny
        decided = decide_with(entered, caller, web_meta())
    except BrokerError as exc:
        return _page("enter.html", exc.status, error=exc, entered=entered[:32])
    return _page("done.html", request_info=_describe(decided), approved=verdict == "approve")


class _NoVerdict(BrokerError):
    code = "bad_request"
    status = 400

    def __init__(self) -> None:
        super().__init__(
            "Choose Approve or Deny.", hint="Use the buttons on the page; nothing was changed."
        )


def _describe(found: DeviceRequest) -> dict[str, Any]:
    """What the page shows about a request (all of it escaped by the template)."""
    return {
        "user_code": found.user_code,
        "client": found.client_name,
        "client_id": found.client_id,
        "ip": found.requester_ip or "unknown",
        "user_agent": found.requester_agent or "unknown",
        "created_at": found.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "expires_at": found.expires_at.strftime("%H:%M:%S UTC"),
    }
