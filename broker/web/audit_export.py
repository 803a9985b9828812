"""`GET /audit/export`: the audit export as a streamed download, for auditors only."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from flask import Blueprint, Response, request, stream_with_context
from sqlalchemy.exc import SQLAlchemyError

from broker.audit import EventContext, NewEvent
from broker.audit.export import FORMATS, ExportFilter, as_format, export
from broker.auth.websession import current_caller
from broker.db import get_database
from broker.errors import AuditUnavailable, BadRequest, Forbidden
from broker.grants import Caller, GrantService
from broker.models import utcnow
from broker.services import grant_service
from broker.web.authn import authenticate, request_meta

bp = Blueprint("audit_export", __name__)

MEDIA_TYPES = {
    "jsonl": ("application/x-ndjson", "jsonl"),
    "csv": ("text/csv; charset=utf-8", "csv"),
    "ocsf": ("application/x-ndjson", "ocsf.jsonl"),
}


@bp.get("/audit/export")
def export_view() -> Response:
    """Stream the export in the chosen format; the export itself is audited first."""
    service = grant_service()
    caller, client = _caller(service)
    if not service.policy.evaluator.is_auditor(caller.person, utcnow()):
        raise Forbidden(
            "Only people the policy names as auditors can export the audit trail.",
            hint="Ask an administrator to add you to the policy's `auditors`.",
        )
    fmt = request.args.get("format", "jsonl")
    if fmt not in FORMATS:
        raise BadRequest(f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    export_format = as_format(fmt)
    flt = ExportFilter(
        since=_time("since"),
        until=_time("until"),
        person=request.args.get("person") or None,
        entitlement=request.args.get("entitlement") or None,
        action=request.args.get("action") or None,
    )
    now = utcnow()
    _record_export(service, caller, client, fmt, flt)
    database = get_database()

    def generate() -> Iterator[str]:
        with database.snapshot_session() as session:
            yield from export(session, export_format, flt, now=now)

    media_type, extension = MEDIA_TYPES[fmt]
    name = f"broker-audit-{now.strftime('%Y%m%dT%H%M%SZ')}.{extension}"
    return Response(
        stream_with_context(generate()),
        mimetype=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _caller(service: GrantService) -> tuple[Caller, str]:
    """The browser session's person first, else a bearer token (401 when neither)."""
    caller = current_caller()
    if caller is not None:
        return caller, "web"
    return authenticate(service), request_meta().client


def _time(name: str) -> datetime | None:
    value = request.args.get(name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(
            f"`{name}` must be an ISO 8601 date or time, such as 2024-05-01T00:00:00Z."
        ) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _record_export(
    service: GrantService, caller: Caller, client: str, fmt: str, flt: ExportFilter
) -> None:
    meta = request_meta(client)
    context = EventContext(
        actor=caller.email,
        ip=meta.ip,
        user_agent=meta.user_agent,
        client=meta.client,
        policy_version=service.policy.version,
    )
    event = NewEvent(
        "audit.export",
        target="audit-trail",
        decision="allow",
        details={"format": fmt, "filters": flt.describe()},
    )
    try:
        with get_database().session() as session:
            service.audit.append(session, context, event)
    except SQLAlchemyError as exc:
        raise AuditUnavailable(
            "The export could not be recorded in the audit trail, so it was not started.",
            hint="Try again shortly; if it persists, tell the platform team.",
        ) from exc
