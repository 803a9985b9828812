"""Errors as JSON `{code, message}` for the API (and plain pages elsewhere)."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from broker.errors import BrokerError

log = logging.getLogger(__name__)


def wants_json() -> bool:
    """API paths and JSON clients get JSON errors."""
    return request.path.startswith(("/api/", "/oauth/")) or request.accept_mimetypes.best == (
        "application/json"
    )


def init_app(app: Flask) -> None:
    """Register the error handlers."""

    @app.errorhandler(BrokerError)
    def _broker_error(exc: BrokerError) -> tuple[Response, int]:
        if exc.status >= 500:
            log.warning("request failed: %s (%s)", exc.message, exc.code)
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | HTTPException:
        if not wants_json():
            return exc
        code = {
            413: "request_too_large",
            404: "not_found",
            405: "method_not_allowed",
            400: "bad_request",
        }.get(exc.code or 500, "http_error")
        message = exc.description or exc.name
        if exc.code == 413:
            message = "The request body is larger than the broker accepts."
        response = jsonify(code=code, message=message)
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error")
        return jsonify(
            code="internal_error",
            message="Something went wrong inside the broker; nothing was issued.",
        ), 500
