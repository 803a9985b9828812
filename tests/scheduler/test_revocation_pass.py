"""The revocation pass over the database: many people on one role, time travel, IAM failures."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apibed import Bed
from botocore.exceptions import ClientError
from schedbed import Clock, needs_iamsim, role_policies, session_context, simulate_sessions
from sqlalchemy import insert, select

from broker.db import get_database
from broker.models import AuditEvent, Revocation
from broker.revocation import IAM_INLINE_BUDGET, POLICY_NAME, policy_size
from broker.scheduler import Scheduler

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _queue_people(bed: Bed, role: str, count: int) -> list[dict[str, Any]]:
    rows = [
        {
            "id": uuid.uuid4().hex,
            "role_arn": role,
            "scope": "person",
            "source_identity": f"p{i:03d}@example.com",
            "cutoff": T0 + timedelta(seconds=i * 7.2 + 0.25),
            "drop_after": T0 + timedelta(seconds=i * 7.2) + HOUR,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": T0,
            "created_at": T0 + timedelta(seconds=i * 7.2 + 0.25),
        }
        for i in range(count)
    ]
    with get_database(bed.app).session() as session:
        session.execute(insert(Revocation), rows)
    return rows


def _statuses(bed: Bed) -> dict[str, int]:
    with get_database(bed.app).session() as session:
        found: dict[str, int] = {}
        for status in session.scalars(select(Revocation.status)).all():
            found[status] = found.get(status, 0) + 1
        return found


@needs_iamsim
@pytest.mark.slow
def test_five_hundred_people_fit_deny_exactly_and_are_dropped_later(bed: Bed) -> None:
    role = bed.roles["read"]
    rows = _queue_people(bed, role, 500)
    clock = Clock(max(r["cutoff"] for r in rows))
    iam = bed.moto.client("iam")
    scheduler = Scheduler(bed.app, clock=clock, iam_client=iam)

    result = scheduler.revoke()
    assert result.puts == 1 and len(result.applied[role]) == 500
    assert _statuses(bed) == {"applied": 500}
    policies = role_policies(iam, role)
    assert sum(policy_size(doc) for doc in policies.values()) <= IAM_INLINE_BUDGET
    sessions = [
        session_context(r["source_identity"], r["cutoff"] - timedelta(minutes=m), None)
        for r in rows
        for m in (0, 45)
    ]
    sessions.append(session_context("carol@example.com", T0, None))
    sessions.append(session_context("p000@example.com", T0 + 2 * HOUR, None))
    got = simulate_sessions(iam, role, sessions)
    assert got[:-2] == ["ExplicitlyDenied"] * 1000
    assert got[-2:] == ["Allowed", "Allowed"]
    assert scheduler.revoke().applied == {}  # nothing due: no IAM write, no audit event

    clock.now = rows[249]["drop_after"] + timedelta(seconds=1)  # the first 250 are over
    result = scheduler.revoke()
    assert len(result.dropped[role]) == 250
    assert _statuses(bed) == {"applied": 250, "dropped": 250}
    ours = str(role_policies(iam, role)[POLICY_NAME])
    assert "p000@example.com" not in ours and "p499@example.com" in ours

    clock.now = rows[-1]["drop_after"] + timedelta(seconds=1)
    scheduler.revoke()
    assert POLICY_NAME not in role_policies(iam, role)  # the foreign policy stays
    assert list(role_policies(iam, role)) == ["read"]
    assert _statuses(bed) == {"dropped": 500}
    with get_database(bed.app).session() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "revocation.applied")
        ).all()
    assert [len(e.details["applied"]) for e in events] == [500, 0, 0]
    assert [len(e.details["dropped"]) for e in events] == [0, 250, 250]
    assert events[-1].details["policy_deleted"] is True


class FlakyIam:
    """An IAM client whose PutRolePolicy fails while ``failing`` is set."""

    def __init__(self, iam: Any) -> None:
        self.iam = iam
        self.failing = True
        self.puts = 0

    def put_role_policy(self, **kwargs: Any) -> Any:
        self.puts += 1
        if self.failing:
            raise ClientError(
                {"Error": {"Code": "ServiceFailure", "Message": "IAM is having a bad day"}},
                "PutRolePolicy",
            )
        return self.iam.put_role_policy(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.iam, name)


def test_failed_write_stays_pending_with_backoff_and_is_audited(bed: Bed) -> None:
    role = bed.roles["read"]
    _queue_people(bed, role, 3)
    clock = Clock(T0 + timedelta(minutes=1))
    iam = FlakyIam(bed.moto.client("iam"))
    scheduler = Scheduler(bed.app, clock=clock, iam_client=iam, sleep=lambda _s: None)

    result = scheduler.revoke()
    assert role in result.failed and iam.puts == 3  # three tries in the pass
    with get_database(bed.app).session() as session:
        rows = session.scalars(select(Revocation)).all()
        assert {(r.status, r.attempts) for r in rows} == {("pending", 1)}
        assert all("bad day" in (r.last_error or "") for r in rows)
        assert all(r.next_attempt_at == clock.now + timedelta(seconds=2) for r in rows)
        failed = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "revocation.failed")
        ).one()
    assert failed.target == role and len(failed.details["pending"]) == 3

    assert scheduler.revoke().failed == {}  # backing off: not tried again yet
    assert iam.puts == 3
    clock.now += timedelta(seconds=2)
    scheduler.revoke()  # second failure: the wait doubles
    with get_database(bed.app).session() as session:
        rows = session.scalars(select(Revocation)).all()
        assert {r.attempts for r in rows} == {2}
        assert all(r.next_attempt_at == clock.now + timedelta(seconds=4) for r in rows)

    iam.failing = False
    clock.now += timedelta(seconds=4)
    result = scheduler.revoke()
    assert len(result.applied[role]) == 3
    assert _statuses(bed) == {"applied": 3}
    assert POLICY_NAME in role_policies(bed.moto.client("iam"), role)
