"""One module owns the bytes: the body text is canonical JSON, the fast paths write the same."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from audittrail import export_text, seed

from broker.audit import AuditLog, EventContext, NewEvent, verify_database
from broker.audit.body import body_text, format_ts, hash_body
from broker.audit.chain import chain_hash, event_body
from broker.audit.export import CSV_COLUMNS, ExportFilter, csv_row
from broker.canonical import canonical_json
from broker.db import Database
from broker.models import AuditEvent

AWKWARD = [
    None,
    "",
    "plain",
    'quote " and \\ backslash',
    "new\nline\ttab\rreturn\x01soh\x1f\x7f",
    "ünïcode “quotes” \u2028 \U0001f600",
    "=SUM(A1)",
]


@pytest.mark.parametrize("value", AWKWARD)
def test_body_text_is_canonical_json_of_the_fields(value: str | None) -> None:
    fields = {
        "seq": 7,
        "ts": format_ts(datetime(2024, 5, 1, 9, 0, 0, 1, tzinfo=UTC)),
        "actor": value or "someone",
        "action": "test.awkward",
        "target": value,
        "decision": value,
        "reason": value,
        "ip": value,
        "user_agent": value,
        "client": value,
        "policy_version": value,
        "details": {"k": value, "nested": {"b": [1, value], "a": True}},
    }
    text = body_text(
        7,
        fields["ts"],
        fields["actor"],
        "test.awkward",
        value,
        value,
        value,
        value,
        value,
        value,
        value,
        canonical_json(fields["details"]),
    )
    assert text == canonical_json(fields)
    assert hash_body("0" * 64, text) == chain_hash("0" * 64, fields)


def test_appended_events_hash_as_their_canonical_body(database: Database) -> None:
    log = AuditLog()
    with database.session() as session:
        for value in AWKWARD:
            log.append(
                session,
                EventContext(actor="a", ip="10.0.0.1", user_agent=value, client="api"),
                NewEvent("test.awkward", target=value, reason=value, details={"v": value}),
            )
    with database.session() as session:
        rows = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all()
        assert [chain_hash(r.prev_hash, event_body(r)) for r in rows] == [r.hash for r in rows]
        assert verify_database(session).ok


def test_fast_csv_is_what_the_csv_module_writes(database: Database) -> None:
    seed(database, 4)
    log = AuditLog()
    with database.session() as session:
        for value in AWKWARD:
            log.append(
                session,
                EventContext(actor="a", user_agent=value),
                NewEvent("grant.revoked", target=value, reason=value, details={"grant_id": value}),
            )
    fast = export_text(database, "csv")  # unfiltered: straight from the stored rows
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    with database.session() as session:
        for event in session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)):
            writer.writerow(
                csv_row(
                    tuple(getattr(event, c) for c in (*CSV_COLUMNS[:11], "details"))
                    + (event.prev_hash, event.hash)
                )
            )
    assert fast == buffer.getvalue()
    every = export_text(database, "csv", ExportFilter(action="*"))  # the filtered path
    assert every == fast


def test_details_stored_in_another_json_form_are_judged_by_content(database: Database) -> None:
    seed(database, 2)
    update = sa.text(
        "UPDATE audit_events SET details = CAST(:d AS JSON) WHERE seq = :seq"
        if database.dialect == "postgresql"
        else "UPDATE audit_events SET details = :d WHERE seq = :seq"
    )
    respaced = (
        '{ "grant_id" : "g0000000000000000000000000000000",'
        ' "request_reason": "on call, \\u201curgent\\u201d" }'
    )
    with database.session() as session:
        session.execute(update, {"d": respaced, "seq": 2})
    with database.session() as session:
        assert verify_database(session).ok  # same content, other bytes: not an edit
        session.execute(update, {"d": '{"x": 1}', "seq": 3})
    with database.session() as session:
        result = verify_database(session)
    assert not result.ok and result.broken is not None and result.broken.seq == 3


def test_append_many_chains_as_appending_one_by_one(database: Database) -> None:
    log = AuditLog()
    events = [NewEvent("test.batch", target=v, reason=v, details={"v": v}) for v in AWKWARD]
    with database.session() as session:
        log.append(session, EventContext(actor="a"), NewEvent("test.before"))
        log.append_many(session, EventContext(actor="scheduler", client="scheduler"), events)
        log.append(session, EventContext(actor="a"), NewEvent("test.after"))
    with database.session() as session:
        rows = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all()
        assert [r.seq for r in rows] == list(range(1, len(AWKWARD) + 3))
        assert [r.action for r in rows[1:-1]] == ["test.batch"] * len(AWKWARD)
        assert [r.details for r in rows[1:-1]] == [{"v": v} for v in AWKWARD]
        assert verify_database(session).ok
