"""What the pages say and to whom: plain reasons, one duration format, sensible defaults, one
step to credentials, error pages in the layout, audit paging with the export's filters, and the
compliance report (test client over moto, SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from uibed import ADMIN, APPROVER, DEV, SRE, Ui, csrf_of

from broker.audit import EventContext, NewEvent
from broker.db import get_database
from broker.models import AuditEvent, Grant
from broker.services import grant_service
from broker.web.pagetext import human_duration, time_left, without_policy_locations


def _text(response: Any) -> str:
    return html.unescape(response.get_data(as_text=True))


def _post(client: Any, path: str, page: str, **data: str) -> Any:
    return client.post(path, data={"csrf_token": csrf_of(page), **data})


def _nav(page: str) -> list[str]:
    nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', page, re.S)
    assert nav, "no main navigation"
    return re.findall(r'<a href="([^"]+)"', nav.group(1))


def test_durations_and_countdowns_are_written_one_way() -> None:
    assert human_duration(timedelta(hours=4)) == "4h"
    assert human_duration(240 * 60) == "4h"
    assert human_duration("1h30m") == "1h 30m"
    assert human_duration(timedelta(minutes=45)) == "45m"
    now = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
    assert time_left(now + timedelta(hours=7, minutes=59, seconds=59), now) == "7h 59m 59s left"
    assert time_left(now + timedelta(minutes=5, seconds=3), now) == "5m 03s left"
    assert time_left(now - timedelta(seconds=1), now) == "expired"


def test_policy_locations_are_for_admins_only(ui: Ui) -> None:
    reason = "not allowed by entitlement app-admin (policy.yaml:27): needs membership of sre"
    assert without_policy_locations(reason) == (
        "not allowed by entitlement app-admin: needs membership of sre"
    )
    engineer = _text(ui.signed_in(DEV).get("/"))
    refused = re.search(r'<li data-entitlement="app-admin">(.*?)</li>', engineer, re.S)
    assert refused and "needs membership" in refused.group(1)
    assert ".yaml:" not in engineer
    admin = _text(ui.signed_in(ADMIN).get("/"))
    assert re.search(r"app-admin \(policy\.yaml:\d+\)", admin)  # admins keep file and line
    denied = _text(ui.signed_in(DEV).get("/request/app-admin"))
    assert "You may not use this entitlement" in denied and ".yaml:" not in denied


def test_request_form_defaults_to_an_hour_and_one_step_issues(ui: Ui) -> None:
    client = ui.signed_in()
    form = _text(client.get("/request/app-read"))
    assert re.search(r'<option value="1h" selected>1h</option>', form)  # max grant is 4h
    assert '<option value="4h" >4h</option>' in form
    home = _text(client.get("/"))
    row = re.search(r'<tr data-entitlement="app-read">(.*?)</tr>', home, re.S)
    assert row and 'action="/request/app-read"' in row.group(1)  # one click from home
    assert 'name="duration" value="1h"' in row.group(1)
    page = _post(client, "/request/app-read", home, duration="1h")
    assert page.status_code == 200 and 'id="aws-access-key-id"' in _text(page)
    with ui.app.app_context(), get_database().session() as session:
        grant = session.scalars(sa.select(Grant)).one()
        assert grant.status == "active" and grant.duration_seconds == 3600
    # With the grant active, the same button issues under it instead of asking again.
    home = _text(client.get("/"))
    row = re.search(r'<tr data-entitlement="app-read">(.*?)</tr>', home, re.S)
    assert row and 'action="/credentials/app-read"' in row.group(1)
    again = _post(client, "/request/app-read", home, duration="1h")
    assert again.status_code == 200 and 'id="aws-access-key-id"' in _text(again)
    card = re.search(
        r'<li class="card" data-grant="[^"]+">(.*?)</li>', _text(client.get("/")), re.S
    )
    assert card
    assert re.search(
        r'Ends <time datetime="[^"]+">\d{4}-\d\d-\d\d \d\d:\d\d UTC</time>.*'
        r'<time class="countdown" datetime="[^"]+">\d+m \d\ds left</time>',
        card.group(1),
        re.S,
    ), card.group(1)


def test_pending_request_says_who_approves_in_one_duration_format(ui: Ui) -> None:
    requester = ui.signed_in(SRE)
    form = _text(requester.get("/request/app-admin"))
    assert "Ask for approval" in form and 'name="profile"' not in form
    pending = _text(_post(requester, "/request/app-admin", form, reason="INC-7", duration="1h"))
    assert "Request pending approval" in pending and "Who can approve: group security" in pending
    home = _text(requester.get("/"))
    assert "for 1h." in home and "Who can approve: group security" in home
    approver = _text(ui.signed_in(APPROVER).get("/approvals"))
    assert "For 1h." in approver and "minutes" not in approver


def test_navigation_shows_what_each_person_can_use(ui: Ui) -> None:
    assert _nav(_text(ui.signed_in(DEV).get("/"))) == ["/"]
    assert _nav(_text(ui.signed_in(APPROVER).get("/"))) == ["/", "/approvals"]
    assert _nav(_text(ui.signed_in(ADMIN).get("/"))) == ["/", "/admin", "/audit"]


def test_notices_are_styled_by_meaning(ui: Ui) -> None:
    page = _text(ui.signed_in(APPROVER).get("/approvals?done=approved"))
    assert '<p class="notice success" role="status">Request approved' in page
    page = _text(ui.signed_in(DEV).get("/?done=revoked"))
    assert '<p class="notice success" role="status">Grant ended.' in page


def test_error_pages_keep_the_layout_and_name_the_request_id(ui: Ui) -> None:
    def boom() -> str:
        raise RuntimeError("boom")

    ui.app.add_url_rule("/test-boom", view_func=boom)
    admin = ui.signed_in(ADMIN)
    for path, status, title in (
        ("/nowhere", 404, "Not found"),
        ("/logout", 405, "Not allowed this way"),
        ("/test-boom", 500, "Something went wrong"),
    ):
        response = admin.get(path)
        page = _text(response)
        assert response.status_code == status, path
        assert re.search(rf"<h1[^>]*>{title}</h1>", page), path
        assert _nav(page) == ["/", "/admin", "/audit"], path  # the signed-in person's pages
        request_id = response.headers["X-Request-Id"]
        assert f'<code id="request-id">{request_id}</code>' in page, path
        assert "If you entered the URL manually" not in page
    anonymous = ui.browser().get("/nowhere")
    assert anonymous.status_code == 404 and 'id="request-id"' in _text(anonymous)


def _add_events(ui: Ui, count: int) -> None:
    """Append events to the real chain, alternating two actions."""
    with ui.app.app_context():
        service = grant_service()
        with get_database().session() as session:
            for n in range(count):
                service.audit.append(
                    session,
                    EventContext(actor="robot@example.com", client="cli"),
                    NewEvent(
                        "grant.expire" if n % 2 else "credentials.issue",
                        target="app-read",
                        decision="allow",
                        details={"entitlement": "app-read", "n": n},
                    ),
                )


def _page_seqs(page: str) -> list[int]:
    return [int(s) for s in re.findall(r'<tr data-action="[^"]+" data-seq="(\d+)">', page)]


def test_audit_pages_through_events_with_the_exports_filters(ui: Ui) -> None:
    admin = ui.signed_in(ADMIN)
    _add_events(ui, 70)
    first = _text(admin.get("/audit"))
    seqs = _page_seqs(first)
    assert len(seqs) == 50 and seqs == sorted(seqs, reverse=True)
    older = re.search(r'<a href="([^"]+)" rel="next">Older events</a>', first)
    assert older and "Newer events" not in first
    second = _text(admin.get(older.group(1)))
    rest = _page_seqs(second)
    assert rest and max(rest) < min(seqs) and "Older events" not in second
    newer = re.search(r'<a href="([^"]+)" rel="prev">Newer events</a>', second)
    assert newer and _page_seqs(_text(admin.get(newer.group(1)))) == seqs

    # A glob, as the export takes it; the page and the export list the same events.
    globbed = _text(admin.get("/audit", query_string={"action": "grant.*"}))
    shown = set(re.findall(r'<tr data-action="([^"]+)"', globbed))
    assert shown == {"grant.expire"}
    total = int(re.search(r"(\d+) matching events", globbed).group(1))  # type: ignore[union-attr]
    export_link = re.search(r'<a href="([^"]+)" id="export-jsonl">', globbed)
    assert export_link and "action=grant.%2A" in export_link.group(1)
    exported = admin.get(html.unescape(export_link.group(1))).get_data(as_text=True)
    events = [json.loads(line) for line in exported.splitlines() if line.strip()]
    actions = [e["body"]["action"] for e in events if e.get("type") == "event"]
    assert set(actions) == {"grant.expire"} and len(actions) == total == 35

    by_person = _text(admin.get("/audit", query_string={"person": "ROBOT@example.com"}))
    assert "70 matching events" in by_person
    by_entitlement = _text(admin.get("/audit", query_string={"entitlement": "app-read"}))
    assert "70 matching events" in by_entitlement
    refused = admin.get("/audit", query_string={"action": "grant.[ae]*"})
    assert refused.status_code == 400 and "use * and ?" in _text(refused)


def test_audit_event_page_shows_everything(ui: Ui) -> None:
    admin = ui.signed_in(ADMIN)
    with ui.app.app_context(), get_database().session() as session:
        event = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).first()
        assert event is not None
        seq, digest = event.seq, event.hash
    page = _text(admin.get(f"/audit/events/{seq}"))
    assert f"Audit event #{seq}" in page and digest in page
    assert admin.get("/audit/events/999999").status_code == 404
    assert ui.signed_in(DEV).get(f"/audit/events/{seq}").status_code == 403


def test_compliance_report_page_and_csv_for_auditors(ui: Ui) -> None:
    dev = ui.signed_in(DEV)
    _post(dev, "/request/app-read", _text(dev.get("/")), duration="1h")
    admin = ui.signed_in(ADMIN)
    page = _text(admin.get("/audit/report"))
    assert "<h1>Compliance report</h1>" in page
    people = re.search(r'<tr data-person="dev@example.com">(.*?)</tr>', page, re.S)
    assert people, "dev is missing from the report"
    cells = re.findall(r'<td class="n">(\d+)</td>', people.group(1))
    assert cells[0] == "1" and cells[-1] == "1"  # one grant, one session
    assert "None: no one held a grant or a live session after their end date." in page
    link = re.search(r'<a href="([^"]+)" id="report-csv"', page)
    assert link
    download = admin.get(html.unescape(link.group(1)))
    assert download.status_code == 200 and download.mimetype == "text/csv"
    assert "attachment" in download.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(download.get_data(as_text=True))))
    assert rows[0][0] == "section" and ["person", "dev@example.com"] == rows[1][:2]
    with ui.app.app_context(), get_database().session() as session:
        actions = session.scalars(sa.select(AuditEvent.action)).all()
    assert "audit.report" in actions
    assert ui.signed_in(DEV).get("/audit/report").status_code == 403
    bad = admin.get("/audit/report", query_string={"since": "2025-02-01", "until": "2025-01-01"})
    assert bad.status_code == 400


@pytest.mark.parametrize("path", ["/admin/grants/nope", "/admin/people/nope"])
def test_confirmation_pages_of_unknown_things_are_404(ui: Ui, path: str) -> None:
    assert ui.signed_in(ADMIN).get(path).status_code == 404
