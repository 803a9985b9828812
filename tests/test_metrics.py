"""/metrics keeps its audit counts as running totals: a scrape reads only the new events."""

from __future__ import annotations

import sqlalchemy as sa

from broker.audit import AuditLog, EventContext, NewEvent
from broker.db import Database
from broker.metrics import registry_for


def _append(database: Database, action: str, n: int, decision: str | None = None) -> None:
    log = AuditLog()
    with database.session() as session:
        for _ in range(n):
            log.append(session, EventContext(actor="a"), NewEvent(action, decision=decision))


def _scrape(database: Database, registry: object) -> tuple[dict[str, float], list[str]]:
    """Samples by name and labels, and the SQL run to get them."""
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sa.event.listen(database.engine, "before_cursor_execute", seen)
    try:
        samples = {
            f"{s.name}{sorted(s.labels.items())}": s.value
            for metric in registry.collect()  # type: ignore[attr-defined]
            for s in metric.samples
        }
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", seen)
    return samples, statements


def test_audit_counts_are_running_totals_read_from_new_events_only(database: Database) -> None:
    registry = registry_for(database)
    _append(database, "credentials.issued", 30)
    _append(database, "credentials.issue", 4, decision="deny")
    first, _ = _scrape(database, registry)
    assert first["broker_credentials_issued_total[]"] == 30
    assert first["broker_denials_total[('action', 'credentials.issue')]"] == 4

    _append(database, "credentials.issued", 2)
    _append(database, "revocation.failed", 1, decision="error")
    second, statements = _scrape(database, registry)
    assert second["broker_credentials_issued_total[]"] == 32
    assert second["broker_revocation_failures_total[]"] == 1
    assert second["broker_denials_total[('action', 'credentials.issue')]"] == 4
    audit_reads = [s for s in statements if "audit_events" in s]
    # One read of the events, bounded below by the last scrape's head: never the whole trail.
    assert len(audit_reads) == 1 and "audit_events.seq >" in audit_reads[0], audit_reads

    third, statements = _scrape(database, registry)  # nothing new: the events are not read
    assert third["broker_credentials_issued_total[]"] == 32
    assert not [s for s in statements if "audit_events" in s], statements
