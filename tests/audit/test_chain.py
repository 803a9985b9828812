"""The hash chain: appends link, tampering is detected at the right event."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from broker.audit import AuditLog, EventContext, NewEvent, verify_database
from broker.db import Database
from broker.models import AuditEvent

CTX = EventContext(actor="alice@example.com", ip="127.0.0.1", client="api")


def _append(database: Database, n: int) -> None:
    log = AuditLog()
    for i in range(n):
        with database.session() as session:
            log.append(
                session, CTX, NewEvent(action="test.event", target=f"t{i}", details={"i": i})
            )


def _verify(database: Database) -> tuple[bool, int | None, str]:
    with database.session() as session:
        result = verify_database(session)
    broken = result.broken
    return result.ok, broken.seq if broken else None, str(broken) if broken else ""


def test_appended_events_verify(database: Database) -> None:
    _append(database, 5)
    ok, seq, _ = _verify(database)
    assert ok and seq is None
    with database.session() as session:
        rows = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert all(rows[i].prev_hash == rows[i - 1].hash for i in range(1, 5))


def test_edit_is_detected_at_the_edited_event(database: Database) -> None:
    _append(database, 5)
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_events SET reason = 'forged' WHERE seq = 3"))
    ok, seq, message = _verify(database)
    assert not ok and seq == 3 and "edited" in message


def test_deletion_is_detected_where_the_gap_is(database: Database) -> None:
    _append(database, 5)
    with database.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq = 2"))
    ok, seq, _ = _verify(database)
    assert not ok and seq == 3


def test_reorder_is_detected(database: Database) -> None:
    _append(database, 5)
    with database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_events SET seq = 100 WHERE seq = 2"))
        conn.execute(sa.text("UPDATE audit_events SET seq = 2 WHERE seq = 4"))
        conn.execute(sa.text("UPDATE audit_events SET seq = 4 WHERE seq = 100"))
    ok, seq, _ = _verify(database)
    assert not ok and seq == 2


def test_truncating_the_tail_is_detected(database: Database) -> None:
    _append(database, 5)
    with database.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq = 5"))
    ok, seq, message = _verify(database)
    assert not ok and seq == 5 and "deleted" in message


def test_secret_looking_details_are_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="looks like a secret"):
        with database.session() as session:
            AuditLog().append(
                session, CTX, NewEvent(action="x", details={"SecretAccessKey": "abc"})
            )
    ok, _, _ = _verify(database)
    assert ok


def test_concurrent_appends_keep_one_chain(database: Database) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            _append(database, 10)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ok, _, _ = _verify(database)
    assert ok
    with database.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == 40
