"""Grants end at their exact expiry and the deny reaches the role within seconds (moto), and
denies exactly the right sessions (iam-simulate over the policies read back from moto)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from apibed import Bed
from schedbed import (
    issue,
    needs_iamsim,
    role_policies,
    session_context,
    simulate_sessions,
    wait_for,
)
from sqlalchemy import select

from broker.db import get_database
from broker.models import AuditEvent, Grant, IssuedSession, Revocation, utcnow
from broker.revocation import POLICY_NAME
from broker.scheduler import Scheduler

pytestmark = needs_iamsim


def _set_expiry(bed: Bed, grant_id: str, seconds: float) -> Any:
    expires = utcnow() + timedelta(seconds=seconds)
    with get_database(bed.app).session() as session:
        session.get_one(Grant, grant_id).expires_at = expires
    return expires


def _session_row(bed: Bed, session_id: str) -> IssuedSession:
    with get_database(bed.app).session() as session:
        return session.get_one(IssuedSession, session_id)


def _denies(bed: Bed, role_arn: str, *needles: str) -> Any:
    def check() -> Any:
        doc = role_policies(bed.moto.client("iam"), role_arn).get(POLICY_NAME)
        return doc is not None and all(n in str(doc) for n in needles) and utcnow()

    return check


def test_expired_grant_is_denied_within_five_seconds(bed: Bed) -> None:
    alice = bed.token("alice@example.com", ("developers",))
    bob = bed.token("bob@example.com", ("developers",))
    a = issue(bed, alice, "app-read")
    b = issue(bed, bob, "app-read")
    role = bed.roles["read"]
    # A sweep every minute: only the timer at expires_at can end the grant within 5 s.
    scheduler = Scheduler(bed.app, sweep_seconds=60)
    expires = _set_expiry(bed, a["grant_id"], 3)
    scheduler.start()
    try:
        seen = wait_for(_denies(bed, role, a["source_identity"]), timeout=10)
    finally:
        scheduler.stop()
    assert seen - expires < timedelta(seconds=5), seen - expires
    with get_database(bed.app).session() as session:
        grant = session.get_one(Grant, a["grant_id"])
        assert grant.status == "expired"
        assert grant.ended_at is not None and grant.ended_at >= expires
        revocation = session.scalars(select(Revocation)).one()
        assert (revocation.scope, revocation.status) == ("person", "applied")
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all()
    assert actions.count("grant.expired") == 1 and actions.count("revocation.applied") == 1

    time.sleep(1.1)  # a new session in a later second than the cutoff
    later = issue(bed, alice, "app-read")
    assert later["grant_id"] != a["grant_id"]
    rows = [_session_row(bed, x["session_id"]) for x in (a, later, b)]
    contexts = [session_context(r.source_identity, r.issued_at, r.grant_id) for r in rows]
    assert simulate_sessions(bed.moto.client("iam"), role, contexts) == [
        "ExplicitlyDenied",  # alice's session from before the cutoff
        "Allowed",  # alice's session issued after it
        "Allowed",  # bob's session on the same role
    ]


def test_overlapping_grants_keep_the_active_ones_sessions(bed: Bed) -> None:
    alice = bed.token("alice@example.com", ("developers",))
    first = issue(bed, alice, "app-read")
    second = issue(bed, alice, "prod-read")  # another grant on the same role
    role = bed.roles["read"]
    assert first["grant_id"] != second["grant_id"]
    contexts = [
        session_context(r.source_identity, r.issued_at, r.grant_id)
        for r in (_session_row(bed, first["session_id"]), _session_row(bed, second["session_id"]))
    ]
    scheduler = Scheduler(bed.app, sweep_seconds=1)
    _set_expiry(bed, first["grant_id"], 2)
    scheduler.start()
    try:
        wait_for(_denies(bed, role, first["grant_id"]), timeout=10)
        iam = bed.moto.client("iam")
        assert simulate_sessions(iam, role, contexts) == ["ExplicitlyDenied", "Allowed"]

        response = bed.call("POST", f"/grants/{second['grant_id']}/revoke", alice, json={})
        assert response.status_code == 200, response.json
        # The person-wide cutoff now covers (and replaces) the first grant's statement.
        wait_for(_denies(bed, role, first["source_identity"]), timeout=10)
    finally:
        scheduler.stop()
    assert simulate_sessions(iam, role, contexts) == ["ExplicitlyDenied", "ExplicitlyDenied"]
    with get_database(bed.app).session() as session:
        scopes = session.scalars(select(Revocation.scope).order_by(Revocation.created_at)).all()
    assert scopes == ["grant", "person"]


def test_revoking_one_of_two_grants_spares_the_other(bed: Bed) -> None:
    alice = bed.token("alice@example.com", ("developers",))
    first = issue(bed, alice, "app-read")
    second = issue(bed, alice, "prod-read")
    role = bed.roles["read"]
    scheduler = Scheduler(bed.app, sweep_seconds=0.5)
    scheduler.start()
    try:
        response = bed.call("POST", f"/grants/{first['grant_id']}/revoke", alice, json={})
        assert response.status_code == 200, response.json
        wait_for(_denies(bed, role, first["grant_id"]), timeout=10)
    finally:
        scheduler.stop()
    rows = [_session_row(bed, x["session_id"]) for x in (first, second)]
    contexts = [session_context(r.source_identity, r.issued_at, r.grant_id) for r in rows]
    assert simulate_sessions(bed.moto.client("iam"), role, contexts) == [
        "ExplicitlyDenied",
        "Allowed",
    ]
