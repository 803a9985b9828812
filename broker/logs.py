"""JSON logs with a request id on every line."""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
from datetime import UTC, datetime

from flask import Flask, Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-Id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


# Structured fields a log call may pass with `extra=`; they become keys of the JSON line, so
# operators filter on them instead of parsing sentences. Never a secret among them.
FIELDS = (
    "event",
    "person",
    "principal",
    "entitlement",
    "role",
    "grant",
    "session",
    "access_key_id",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if has_request_context():
            entry["request_id"] = g.get("request_id")
            entry["path"] = request.path
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_SECRET_XML = re.compile(r"<(SecretAccessKey|SessionToken)>[^<]*</\1>")
_SECRET_JSON = re.compile(r'"(SecretAccessKey|SessionToken)"\s*:\s*"[^"]*"')
# botocore logs whole wire bodies (STS responses carry the issued secret) at DEBUG level.
AWS_WIRE_LOGGERS = ("botocore.parsers", "botocore.endpoint", "botocore.hooks", "urllib3")


class RedactSecrets(logging.Filter):
    """Blank out issued secret keys and session tokens in any record that carries them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRET_JSON.sub(
            r'"\1": "<redacted>"', _SECRET_XML.sub(r"<\1>redacted</\1>", message)
        )
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def quiet_aws_wire_logs() -> None:
    """Never let AWS wire logging carry issued secrets, whatever the root log level."""
    for name in ("botocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in AWS_WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


def init_app(app: Flask) -> None:
    """Install the JSON formatter and the request id hooks."""
    quiet_aws_wire_logs()
    if app.config.get("LOG_JSON", True):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger("broker")
        if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
            root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False

    @app.before_request
    def _assign_request_id() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _SAFE_ID.match(incoming) else secrets.token_hex(8)

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        if "request_id" in g:
            response.headers[REQUEST_ID_HEADER] = g.request_id
        return response
