"""A scheduler whose host clock is 15 minutes off decides by the database's clock.

The host clock is skewed by injection (`DatabaseClock(host=...)`); the database's clock is the
real PostgreSQL server's. With SQLite there is one host and its clock is the database's, so
these tests run on PostgreSQL, where web workers and schedulers live on other hosts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from apibed import Bed
from schedbed import role_policies

from broker.clock import DatabaseClock
from broker.db import get_database
from broker.models import Grant, GrantStatus, Revocation, RevocationStatus
from broker.revocation import POLICY_NAME
from broker.scheduler import Scheduler

pytestmark = pytest.mark.postgres
SKEW = timedelta(minutes=15)
DEV = ("developers",)


def _skewed(bed: Bed, skew: timedelta) -> DatabaseClock:
    with bed.app.app_context():
        database = get_database()
    return DatabaseClock(database, host=lambda: datetime.now(UTC) + skew)


def _grant(bed: Bed, grant_id: str) -> Grant:
    with bed.app.app_context(), get_database().session() as session:
        grant = session.get(Grant, grant_id)
        assert grant is not None
        return grant


def _issue_15_minutes(bed: Bed) -> dict[str, object]:
    token = bed.token("dev@example.com", DEV)
    response = bed.call(
        "POST", "/credentials", token, json={"entitlement": "app-read", "duration": "15m"}
    )
    assert response.status_code == 201, response.json
    body: dict[str, object] = response.json
    return body


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_fast_host_ends_no_grant_early(bed: Bed) -> None:
    issued = _issue_15_minutes(bed)
    grant_id = str(issued["grant_id"])
    with bed.app.app_context(), get_database().session() as session:
        session.execute(
            sa.update(Grant)
            .where(Grant.id == grant_id)
            .values(expires_at=datetime.now(UTC) + timedelta(minutes=10))
        )
    fast = _skewed(bed, SKEW)
    scheduler = Scheduler(bed.app, clock=fast)
    assert scheduler.expire_due() == []  # the host thinks it is 5 minutes past the expiry
    assert _grant(bed, grant_id).status == GrantStatus.ACTIVE
    assert abs(fast.skew_seconds + SKEW.total_seconds()) < 5  # the skew was seen
    # The timer for the exact expiry is set in host time, 15 minutes later on the host's dial.
    expires_at = _grant(bed, grant_id).expires_at
    assert expires_at is not None
    assert abs((scheduler._host_time(expires_at) - expires_at) - SKEW) < timedelta(seconds=5)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_fast_host_drops_no_deny_while_its_session_lives(bed: Bed) -> None:
    issued = _issue_15_minutes(bed)
    token = bed.token("dev@example.com", DEV)
    revoked = bed.call("POST", f"/grants/{issued['grant_id']}/revoke", token, json={})
    assert revoked.status_code == 200, revoked.json
    Scheduler(bed.app).revoke()  # in place on AWS, to be dropped when the session expires
    role = bed.roles["read"]
    assert POLICY_NAME in role_policies(bed.moto.client("iam"), role)
    # 16 minutes fast: by its host clock the 15-minute session is over and the deny droppable.
    Scheduler(bed.app, clock=_skewed(bed, SKEW + timedelta(minutes=1))).revoke()
    assert POLICY_NAME in role_policies(bed.moto.client("iam"), role)
    with bed.app.app_context(), get_database().session() as session:
        statuses = set(session.scalars(sa.select(Revocation.status)))
    assert statuses == {RevocationStatus.APPLIED}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_slow_host_still_ends_grants_on_time(bed: Bed) -> None:
    issued = _issue_15_minutes(bed)
    grant_id = str(issued["grant_id"])
    with bed.app.app_context(), get_database().session() as session:
        session.execute(
            sa.update(Grant)
            .where(Grant.id == grant_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=30))
        )
    slow = Scheduler(bed.app, clock=_skewed(bed, -SKEW))
    assert slow.expire_due() == [grant_id]  # its host thinks the grant has 14.5 minutes left
