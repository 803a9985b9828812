"""The activity page: admins and auditors see what credentials did and what was detected;
everyone else is refused."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from uibed import ADMIN, DEV, Ui

from broker.db import get_database
from broker.models import ActivityRecord, Detection, Principal, utcnow


def _seed(ui: Ui) -> None:
    """Two calls by the developer (one after the grant ended) and a detection on the second."""
    now = utcnow()
    with get_database(ui.app).session() as session:
        dev = session.scalars(select(Principal).where(Principal.email == DEV["email"])).one()
        for index, (action, late) in enumerate(
            [("s3:GetObject", False), ("ec2:RunInstances", True)]
        ):
            session.add(
                ActivityRecord(
                    event_id=f"event-{index}",
                    event_time=now - timedelta(minutes=10 - index),
                    action=action,
                    aws_region="eu-west-1",
                    account_id="123456789012",
                    source_ip="203.0.113.7",
                    access_key_id="ASIAEXAMPLE",
                    matched_by="access_key",
                    principal_id=dev.id,
                    grant_id="g" * 32,
                    session_id="s" * 32,
                    entitlement_id="app-read",
                    after_grant_end=late,
                    summary={"instanceType": "p4d.24xlarge"} if late else {},
                )
            )
        session.add(
            Detection(
                rule_id="use-after-grant-end",
                severity="critical",
                response="alert",
                outcome="alerted",
                event_id="event-1",
                event_time=now,
                action="ec2:RunInstances",
                detected_at=now,
                principal_id=dev.id,
                details={"reasons": ["after its grant ended"]},
            )
        )


def test_admins_and_auditors_see_activity(ui: Ui) -> None:
    developer = ui.signed_in(DEV)
    assert developer.get("/activity").status_code == 403
    _seed(ui)
    admin = ui.signed_in(ADMIN)
    page = admin.get("/activity")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert html.count('data-event="event-') == 2
    assert 'data-rule="use-after-grant-end"' in html
    assert "after grant end" in html and "instanceType=p4d.24xlarge" in html

    flagged = admin.get("/activity", query_string={"flagged": "1"}).get_data(as_text=True)
    assert 'data-event="event-1"' in flagged and 'data-event="event-0"' not in flagged
    nobody = admin.get("/activity", query_string={"person": "nobody@example.com"})
    assert "No calls match." in nobody.get_data(as_text=True)
    assert admin.get("/activity", query_string={"since": "yesterday"}).status_code == 400
