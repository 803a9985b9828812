"""Errors as JSON `{code, message}` for the API, and as a clear HTML page everywhere else.

The HTML page is the site's own (navigation included, for whoever is signed in) and names the
request id (`X-Request-Id`, as in the logs), so a person reporting a problem can quote it.
"""

from __future__ import annotations

import logging
import secrets

from flask import Flask, Response, g, jsonify, render_template, request
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from werkzeug.exceptions import HTTPException

from broker.errors import BrokerError, DatabaseUnavailable

log = logging.getLogger(__name__)

_TITLES = {
    400: "The request was refused",
    401: "Sign-in failed",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed this way",
    409: "Already changed",
    413: "Too large",
    429: "Slow down",
    502: "AWS did not answer as expected",
    503: "Temporarily unavailable",
}


def wants_json() -> bool:
    """API paths and JSON clients get JSON errors."""
    return request.path.startswith(("/api/", "/oauth/")) or request.accept_mimetypes.best == (
        "application/json"
    )


# Werkzeug's own wording ("If you entered the URL manually...") replaced by ours.
_HTTP_MESSAGES = {
    404: (
        "There is no page at this address.",
        "Check the address, or start again from the broker's home page.",
    ),
    405: (
        "This address does not accept that kind of request. Changes are made only with the "
        "buttons on the broker's pages (never by following a link).",
        "Go back to the page you came from and use its button.",
    ),
}


def error_page(status: int, message: str, hint: str | None = None, code: str = "") -> Response:
    """Render the HTML error page inside the site's layout, with the request id."""
    if status != 503:  # during an outage, looking the person up would fail again
        _resolve_caller()
    request_id = g.get("request_id") or secrets.token_hex(8)
    g.request_id = request_id
    body = render_template(
        "error.html",
        status=status,
        title=_TITLES.get(status, "Something went wrong"),
        message=message,
        hint=hint,
        code=code,
        request_id=request_id,
    )
    response = Response(body, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _resolve_caller() -> None:
    """Find who is signed in, so the page keeps their navigation; anyone else sees none."""
    if "web_caller" in g:
        return
    from broker.auth.websession import current_caller

    try:
        current_caller()
    except Exception:  # the page must render, whatever made the request fail
        g.web_caller = None


def init_app(app: Flask) -> None:
    """Register the error handlers."""

    @app.errorhandler(BrokerError)
    def _broker_error(exc: BrokerError) -> Response:
        if exc.status >= 500:
            log.warning("request failed: %s (%s)", exc.message, exc.code)
        if wants_json():
            response = jsonify(exc.to_dict())
            response.status_code = exc.status
        else:
            response = error_page(exc.status, exc.message, exc.hint, exc.code)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | HTTPException:
        code = {
            413: "request_too_large",
            404: "not_found",
            405: "method_not_allowed",
            400: "bad_request",
        }.get(exc.code or 500, "http_error")
        message = exc.description or exc.name
        if exc.code == 413:
            message = "The request body is larger than the broker accepts."
        if not wants_json():
            hint = None
            if exc.code in _HTTP_MESSAGES:
                message, hint = _HTTP_MESSAGES[exc.code]
            response = error_page(exc.code or 500, message, hint, code=code)
            for name, value in exc.get_headers():
                if name.lower() == "allow":  # a 405 says which methods would work
                    response.headers["Allow"] = value
            return response
        response = jsonify(code=code, message=message)
        response.status_code = exc.code or 500
        for name, value in exc.get_headers():
            if name.lower() == "allow":  # a 405 says which methods would work (RFC 9110 15.5.6)
                response.headers["Allow"] = value
        return response

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(SATimeoutError)
    def _database_down(exc: Exception) -> Response:
        # An expected outage: one line, no traceback (a 30 s outage must not flood the logs).
        cause = getattr(exc, "orig", None) or exc
        log.warning(
            "database unavailable: %s: %s",
            type(cause).__name__,
            str(cause).strip().splitlines()[0][:200] if str(cause).strip() else "",
        )
        error = DatabaseUnavailable(
            "The broker's database is not answering, so nothing was done.",
            hint="Try again in a few seconds; if it persists, tell the platform team.",
        )
        return _broker_error(error)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response | tuple[Response, int]:
        log.exception("unexpected error")
        message = "Something went wrong inside the broker; nothing was issued."
        if not wants_json():
            return error_page(500, message, code="internal_error")
        return jsonify(code="internal_error", message=message), 500
