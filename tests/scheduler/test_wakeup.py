"""A revoke made through the API reaches AWS at once, and reconcile stays cheap at any backlog."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import sqlalchemy as sa
from apibed import Bed
from schedbed import issue, role_policies, wait_for
from seed import seed_grants

from broker.db import Database, get_database
from broker.models import Grant, Revocation, utcnow
from broker.revocation import POLICY_NAME
from broker.scheduler import Scheduler
from broker.services import grant_service


def test_api_revoke_reaches_aws_without_waiting_for_a_sweep(bed: Bed) -> None:
    scheduler = Scheduler(bed.app, sweep_seconds=300)  # the next sweep is five minutes away
    scheduler.start()
    try:
        alice = bed.token("alice@example.com", ("developers",))
        issued = issue(bed, alice, "app-read")
        time.sleep(1.0)  # the first sweep (run at start) is over
        started = time.monotonic()
        revoked = bed.call("POST", f"/grants/{issued['grant_id']}/revoke", alice, json={})
        assert revoked.status_code == 200, revoked.json
        iam = bed.moto.client("iam")
        wait_for(
            lambda: (
                issued["source_identity"]
                in str(role_policies(iam, bed.roles["read"]).get(POLICY_NAME, ""))
            ),
            timeout=30,
        )
        # Far below the 300 s sweep: the revoke woke the scheduler (30 s of slack for a loaded CI).
        assert time.monotonic() - started < 30
    finally:
        scheduler.stop()
    with get_database(bed.app).session() as session:
        statuses = session.scalars(sa.select(Revocation.status)).all()
    assert statuses == ["applied"]


def _statements(database: Database, work: object) -> list[str]:
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    sa.event.listen(database.engine, "before_cursor_execute", record)
    try:
        work()  # type: ignore[operator]
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", record)
    return seen


def _ended_backlog(bed: Bed, count: int) -> None:
    """``count`` ended grants whose live sessions are covered by applied grant denies."""
    database = get_database(bed.app)
    now = utcnow()
    seeded = seed_grants(
        database,
        count,
        [bed.roles["read"], bed.roles["admin"]],
        expires_at=lambda i: now - timedelta(minutes=5),
        now=now,
        prefix=uuid.uuid4().hex[:6],
    )
    with database.session() as session:
        session.execute(
            sa.update(Grant)
            .where(Grant.id.in_([s.grant_id for s in seeded]))
            .values(status="expired", ended_at=now - timedelta(minutes=5))
        )
        session.execute(
            sa.insert(Revocation),
            [
                {
                    "id": uuid.uuid4().hex,
                    "role_arn": s.role_arn,
                    "scope": "grant",
                    "source_identity": s.source_identity,
                    "grant_id": s.grant_id,
                    "principal_id": s.principal_id,
                    "cutoff": now - timedelta(minutes=5),
                    "drop_after": now + timedelta(hours=2),
                    "status": "applied",
                    "attempts": 1,
                    "created_at": now - timedelta(minutes=5),
                }
                for s in seeded
            ],
        )


def test_reconcile_on_an_unchanged_backlog_costs_the_same_few_queries(bed: Bed) -> None:
    database = get_database(bed.app)
    service = grant_service(bed.app)
    counts = []
    for size in (20, 200):
        _ended_backlog(bed, size)
        assert service.reconcile() == []  # everything is covered
        counts.append(len(_statements(database, service.reconcile)))
    assert counts[0] == counts[1] <= 4, counts
    # A change is still found: a covered session loses its deny.
    with database.session() as session:
        session.execute(
            sa.delete(Revocation).where(
                Revocation.id.in_(sa.select(Revocation.id).limit(1).scalar_subquery())
            )
        )
    assert len(service.reconcile()) == 1
