"""Dead schedulers leave the heartbeat rows (and /metrics) after a while, live ones stay."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from broker.db import Database
from broker.models import SchedulerLease, utcnow
from broker.scheduler.lease import Lease


def test_rows_of_long_silent_schedulers_are_pruned_at_the_next_heartbeat(
    database: Database,
) -> None:
    now = utcnow()
    lease = Lease(database, clock=utcnow, stale_after=timedelta(seconds=30))
    lease.acquire()
    with database.session() as session:
        session.add(
            SchedulerLease(name="node:dead", holder="dead", heartbeat_at=now - timedelta(hours=2))
        )
        session.add(
            SchedulerLease(
                name="node:resting", holder="resting", heartbeat_at=now - timedelta(minutes=1)
            )
        )
    assert lease.renew()
    with database.session() as session:
        names = set(session.scalars(sa.select(SchedulerLease.name)))
    assert "node:dead" not in names  # silent for 2 h: forgotten
    assert "node:resting" in names  # silent for 1 min: still shown (and alerting)
    assert lease.name in names
