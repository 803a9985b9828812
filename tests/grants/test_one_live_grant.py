"""One live grant per person and entitlement: the database enforces it, races reuse the winner."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from apibed import Bed
from schedbed import issue

from broker.audit import AuditLog, EventContext, NewEvent, verify_database
from broker.db import Database, get_database
from broker.grants import RequestMeta
from broker.migrate import upgrade
from broker.models import AuditEvent, Grant, IssuedSession, utcnow
from broker.services import grant_service

PARALLEL = 8
DEV = ("developers",)


def _grants_of(bed: Bed, email: str) -> list[Grant]:
    with get_database(bed.app).read_session() as session:
        return list(
            session.scalars(
                sa.select(Grant).where(Grant.principal.has(email=email)).order_by(Grant.created_at)
            ).all()
        )


def _actions(bed: Bed, action: str) -> list[AuditEvent]:
    with get_database(bed.app).read_session() as session:
        return list(session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action)))


def test_parallel_first_issuances_share_one_grant(bed: Bed) -> None:
    people = [f"par{i}@example.com" for i in range(3)]
    for email in people:
        token = bed.token(email, DEV)
        start = threading.Barrier(PARALLEL)

        def ask(_: int, token: str = token, start: threading.Barrier = start) -> tuple[int, Any]:
            client = bed.app.test_client()
            start.wait(timeout=30)  # all eight leave together: the race the index settles
            response = client.post(
                "/api/v1/credentials",
                json={"entitlement": "app-read"},
                headers={"Authorization": f"Bearer {token}"},
            )
            body = response.get_json()
            return response.status_code, body.get("grant_id") or body.get("code")

        with ThreadPoolExecutor(PARALLEL) as pool:
            answers = list(pool.map(ask, range(PARALLEL)))
        assert [status for status, _ in answers] == [201] * PARALLEL, answers
        grants = _grants_of(bed, email)
        assert [g.status for g in grants] == ["active"], email
        assert {grant_id for _, grant_id in answers} == {grants[0].id}
    with get_database(bed.app).read_session() as session:
        sessions = session.scalars(sa.select(IssuedSession)).all()
        assert len(sessions) == PARALLEL * len(people)
        assert verify_database(session).ok
    requests = _actions(bed, "grant.request")
    assert len(requests) == len(people)  # one grant created per person, nothing rolled back late


def test_a_lost_insert_race_uses_the_winners_grant(bed: Bed) -> None:
    """The unique index, not the pre-check, settles the race: a loser gets the winner's grant."""
    token = bed.token("racer@example.com", DEV)
    first = issue(bed, token, "app-read")
    with bed.app.app_context():
        service = grant_service()
        with get_database().read_session() as session:
            principal_id = session.get_one(Grant, first["grant_id"]).principal_id
        caller = service.caller_for(principal_id, {"amr": ["pwd", "mfa"]}, RequestMeta())
        # As if the winner committed between this request's look-up and its insert.
        service._active_grant = lambda *args, **kwargs: None  # type: ignore[method-assign]
        service._end_stale_or_refuse = lambda *args, **kwargs: None  # type: ignore[method-assign]
        issued = service.issue(caller, "app-read", duration=None, meta=RequestMeta())
    assert issued.grant_id == first["grant_id"]
    assert [g.id for g in _grants_of(bed, "racer@example.com")] == [first["grant_id"]]
    assert len(_actions(bed, "grant.request")) == 1
    assert len(_actions(bed, "credentials.issued")) == 2


def test_a_second_request_is_a_clear_conflict(bed: Bed) -> None:
    dev = bed.token("dev@example.com", DEV)
    first = bed.call("POST", "/grants", dev, json={"entitlement": "app-read"})
    assert first.status_code == 201, first.json
    again = bed.call("POST", "/grants", dev, json={"entitlement": "app-read", "duration": "1h"})
    assert again.status_code == 409
    assert again.json["code"] == "grant_exists"
    assert first.json["grant"]["id"] in again.json["message"]
    assert "active grant for app-read until" in again.json["message"]

    sre = bed.token("sre@example.com", ("sre",))
    pending = bed.call("POST", "/grants", sre, json={"entitlement": "app-admin", "reason": "A-1"})
    assert pending.status_code == 202 and pending.json["grant"]["status"] == "pending"
    twice = bed.call("POST", "/grants", sre, json={"entitlement": "app-admin", "reason": "A-2"})
    assert twice.status_code == 409 and "pending request for app-admin" in twice.json["message"]
    denials = [e for e in _actions(bed, "grant.request") if e.decision == "deny"]
    assert [e.details["code"] for e in denials] == ["grant_exists", "grant_exists"]


def test_a_grant_past_its_expiry_makes_way_for_a_new_one(bed: Bed) -> None:
    """The scheduler has not ended it yet (down, or between passes): the request ends it."""
    token = bed.token("late@example.com", DEV)
    old = issue(bed, token, "app-read")
    with get_database(bed.app).session() as session:
        grant = session.get_one(Grant, old["grant_id"])
        grant.expires_at = utcnow() - timedelta(seconds=1)
    new = issue(bed, token, "app-read")
    assert new["grant_id"] != old["grant_id"]
    grants = {g.id: g for g in _grants_of(bed, "late@example.com")}
    assert grants[old["grant_id"]].status == "expired"
    assert grants[old["grant_id"]].ended_by == "late@example.com"
    assert grants[new["grant_id"]].status == "active"
    [ended] = _actions(bed, "grant.expired")
    assert ended.details["grant_id"] == old["grant_id"]


def _insert_grant(conn: sa.Connection, gid: str, status: str, **extra: Any) -> None:
    row = {
        "id": gid,
        "principal_id": "p1",
        "entitlement_id": "app-read",
        "role_arn": "arn:aws:iam::123456789012:role/r",
        "status": status,
        "duration_seconds": 3600,
        "policy_version": "v",
        "client": "api",
        "created_at": datetime(2026, 11, 1, 9, 0),
        **extra,
    }
    columns = ", ".join(row)
    values = ", ".join(f":{k}" for k in row)
    conn.execute(sa.text(f"INSERT INTO grants ({columns}) VALUES ({values})"), row)  # noqa: S608


def _insert_principal(conn: sa.Connection, pid: str, email: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO principals (id, issuer, subject, email, source_identity, groups, kind, "
            "disabled, created_at, last_seen_at) VALUES (:id, 'urn:test', :e, :e, :e, '[]', "
            "'staff', :no, :t, :t)"
        ),
        {"id": pid, "e": email, "no": False, "t": datetime(2026, 11, 1, 9, 0)},
    )


@pytest.mark.parametrize("second", ["active", "pending"])
def test_the_database_refuses_a_second_live_grant(database: Database, second: str) -> None:
    with database.engine.begin() as conn:
        _insert_principal(conn, "p1", "pat@example.com")
        _insert_grant(conn, "g-active", "active")
        _insert_grant(conn, "g-old-1", "expired")  # ended grants never count
        _insert_grant(conn, "g-old-2", "revoked")
        _insert_grant(conn, "g-other", "active", entitlement_id="prod-read")
    with pytest.raises(sa.exc.IntegrityError), database.engine.begin() as conn:
        _insert_grant(conn, "g-twin", second)


def test_migration_ends_duplicates_keeping_the_active_one_that_ends_last(db_url: str) -> None:
    database = Database(db_url)
    t0 = datetime(2026, 11, 1, 9, 0)
    try:
        upgrade(database, "0004")
        with database.session() as session:  # a chain that already has history
            AuditLog().append(session, EventContext(), NewEvent("test.before"))
        with database.engine.begin() as conn:
            _insert_principal(conn, "p1", "pat@example.com")
            _insert_grant(conn, "g-short", "active", expires_at=t0 + timedelta(hours=1))
            _insert_grant(conn, "g-long", "active", expires_at=t0 + timedelta(hours=3))
            _insert_grant(
                conn, "g-asked", "pending", created_at=t0 + timedelta(hours=2)
            )  # newer, but a request yields to an active grant
            _insert_grant(conn, "g-prod", "active", entitlement_id="prod-read")
            _insert_grant(conn, "g-done", "expired")
        upgrade(database)
        with database.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, status, ended_by FROM grants ORDER BY id"))
            status = {r.id: (r.status, r.ended_by) for r in rows}
        assert status == {
            "g-asked": ("revoked", "migration:0005"),
            "g-done": ("expired", None),
            "g-long": ("active", None),
            "g-prod": ("active", None),
            "g-short": ("revoked", "migration:0005"),
        }
        with database.session() as session:
            events = session.scalars(
                sa.select(AuditEvent).where(AuditEvent.action == "grant.revoked")
            ).all()
            assert sorted(e.details["grant_id"] for e in events) == ["g-asked", "g-short"]
            assert {e.details["kept_grant_id"] for e in events} == {"g-long"}
            assert {e.actor for e in events} == {"migration:0005"}
            assert verify_database(session).ok
        with pytest.raises(sa.exc.IntegrityError), database.engine.begin() as conn:
            _insert_grant(conn, "g-again", "pending")
    finally:
        database.dispose()
