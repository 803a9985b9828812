"""The activity page for admins and auditors: what a person, grant or session did on AWS
(attributed CloudTrail records, calls after a grant ended flagged), and what was detected.

Reads only, through :mod:`broker.activity.queries` (the same questions `broker activity` asks).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Blueprint, render_template, request

from broker.activity.queries import ActivityFilter, find_activity, find_detections
from broker.auth.websession import login_required, require_caller
from broker.db import get_database
from broker.errors import BadRequest, Forbidden
from broker.services import grant_service

bp = Blueprint("activity", __name__)

FIELDS = ("person", "grant", "session", "since", "until", "flagged")


def _admin_or_auditor() -> None:
    caller = require_caller()
    evaluator = grant_service().policy.evaluator
    if not (evaluator.is_admin(caller.person) or evaluator.is_auditor(caller.person)):
        raise Forbidden(
            "Activity is for the people the policy names as broker admins or auditors.",
            hint="Ask the security team if you need to see what credentials were used for.",
        )


@bp.get("/activity")
@login_required
def activity() -> str:
    """Attributed CloudTrail records and detections, filtered by person, grant, session, dates."""
    _admin_or_auditor()
    args = request.args
    wanted = ActivityFilter(
        person=args.get("person", "").strip()[:320],
        grant=args.get("grant", "").strip()[:64],
        session=args.get("session", "").strip()[:128],
        since=_date(args.get("since"), "since"),
        until=_date(args.get("until"), "until", end_of_day=True),
        flagged=args.get("flagged") == "1",
        limit=200,
    )
    with get_database().read_session() as session:
        records = find_activity(session, wanted)
        detections = find_detections(session, wanted)
    filters = {k: v for k in FIELDS if (v := args.get(k, "").strip())}
    return render_template("activity.html", records=records, detections=detections, filters=filters)


def _date(value: str | None, name: str, *, end_of_day: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError as exc:
        raise BadRequest(f"{name}: expected a date like 2025-01-31, got {value[:40]!r}.") from exc
    return day + timedelta(days=1) if end_of_day else day
