"""A session AWS made but the broker never recorded is denied by name, and nothing else is.

A fault proxy between the broker and moto drops AssumeRole's answer after moto made the session;
moto's own record of that session (its RoleSessionName and ``aws:userid``) is then evaluated by
iam-simulate against the role's policies read back from moto's IAM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from apibed import Bed, create_bed_roles, write_policy
from aws import ACCOUNT_ID
from faultproxy import FaultProxy
from moto.sts.models import sts_backends
from schedbed import (
    app_config,
    issue,
    needs_iamsim,
    role_policies,
    session_context,
    simulate_sessions,
)

from broker import create_app
from broker.audit import verify_database
from broker.db import Database, get_database
from broker.grants.lost import CLOCK_MARGIN, IN_FLIGHT_MAX
from broker.models import AuditEvent, IssuedSession, Revocation, utcnow
from broker.revocation import POLICY_NAME
from broker.scheduler import Scheduler
from broker.services import services

pytestmark = needs_iamsim

DEV = ("developers",)
ENDINGS = {
    "credentials.issued",
    "credentials.failed",
    "credentials.outcome_unknown",
    "credentials.unrecorded",
}


@pytest.fixture
def proxied_bed(
    database: Database, moto_server: Any, tmp_path: Path
) -> Iterator[tuple[Bed, FaultProxy]]:
    """A broker whose AWS calls pass through a fault proxy in front of moto."""
    roles = create_bed_roles(moto_server)
    policy_dir = tmp_path / "policies"
    write_policy(policy_dir, roles, utcnow() + timedelta(minutes=40))
    with FaultProxy(moto_server.endpoint_url, hold_seconds=2.0) as proxy:
        config = app_config(
            database,
            moto_server,
            policy_dir,
            AWS_ENDPOINT_URL=proxy.endpoint_url,
            STS_TIMEOUT_SECONDS=0.5,
        )
        app = create_app(config)
        yield Bed(app, app.test_client(), moto_server, roles, policy_dir), proxy
        app.extensions["broker.db"].dispose()


def made_by_moto(session_name: str) -> Any:
    """The session moto (AWS) really made under this name."""
    made = [
        r for r in sts_backends[ACCOUNT_ID]["aws"].assumed_roles if r.session_name == session_name
    ]
    assert len(made) == 1, session_name
    return made[0]


def context_of(who: str, grant_id: str, made: Any, duration_seconds: int) -> dict[str, str]:
    """What IAM sees on each request of a session moto made."""
    issued = made.expiration.replace(tzinfo=UTC) - timedelta(seconds=duration_seconds)
    return {**session_context(who, issued, grant_id), "aws:userid": made.user_id}


def events(bed: Bed) -> list[AuditEvent]:
    with get_database(bed.app).read_session() as session:
        return list(session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all())


def assert_every_issue_is_followed_up(bed: Bed) -> None:
    """The trail never ends on `credentials.issue` for a session; the chain verifies."""
    trail = events(bed)
    for i, event in enumerate(trail):
        if event.action == "credentials.issue":
            name = event.details["role_session_name"]
            later = [e.action for e in trail[i + 1 :] if e.details.get("role_session_name") == name]
            assert ENDINGS & set(later), (name, later)
    with get_database(bed.app).read_session() as session:
        assert verify_database(session).ok


def revocation_for(bed: Bed, session_name: str) -> Revocation:
    with get_database(bed.app).read_session() as session:
        return session.scalars(
            sa.select(Revocation).where(Revocation.role_session_name == session_name)
        ).one()


def apply_denies(bed: Bed, clock: Any = utcnow) -> Any:
    """One scheduler pass, as the scheduler process runs it; returns the role's deny policy."""
    iam = bed.moto.client("iam")
    scheduler = Scheduler(bed.app, iam_client=iam, clock=clock)
    scheduler.grants().reconcile()
    result = scheduler.revoke()
    assert not result.failed, result.failed
    return role_policies(iam, bed.roles["read"]).get(POLICY_NAME)


def test_a_lost_answer_leaves_that_session_denied_and_no_other(
    proxied_bed: tuple[Bed, FaultProxy],
) -> None:
    bed, proxy = proxied_bed
    alice = bed.token("alice@example.com", DEV)
    bob = bed.token("bob@example.com", DEV)
    kept = issue(bed, alice, "app-read")  # alice's other live session, same grant
    other = issue(bed, bob, "app-read")

    proxy.queue("drop")  # moto makes the session; its answer never reaches the broker
    sent = len(proxy.calls)
    lost = bed.call("POST", "/credentials", alice, json={"entitlement": "app-read"})
    assert lost.status_code == 503 and lost.json["code"] == "aws_outcome_unknown", lost.json
    assert proxy.calls[sent:] == ["AssumeRole"] and proxy.upstream_answers[-1] == 200

    trail = events(bed)
    asked, unknown = trail[-2:]
    assert (asked.action, unknown.action) == ("credentials.issue", "credentials.outcome_unknown")
    name = asked.details["role_session_name"]
    duration = asked.details["duration_seconds"]
    assert unknown.details["role_session_name"] == name
    assert unknown.details["grant_id"] == kept["grant_id"]
    made = made_by_moto(name)  # AWS did make it

    deny = revocation_for(bed, name)
    assert (deny.scope, deny.status, deny.id) == (
        "session",
        "pending",
        unknown.details["revocation"],
    )
    # Kept until the session has surely expired by AWS's own clock, and not much longer.
    expires = made.expiration.replace(tzinfo=UTC)
    assert expires + CLOCK_MARGIN - timedelta(seconds=5) <= deny.drop_after
    assert deny.drop_after <= expires + CLOCK_MARGIN + timedelta(seconds=5)
    with get_database(bed.app).read_session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(IssuedSession)) == 2

    document = apply_denies(bed)
    assert {s["Sid"] for s in document["Statement"]} == {"BrokerSessions"}
    assert revocation_for(bed, name).status == "applied"
    contexts = [
        context_of(kept["source_identity"], kept["grant_id"], made, duration),
        context_of(
            kept["source_identity"],
            kept["grant_id"],
            made_by_moto(kept["role_session_name"]),
            duration,
        ),
        context_of(
            other["source_identity"],
            other["grant_id"],
            made_by_moto(other["role_session_name"]),
            duration,
        ),
    ]
    assert simulate_sessions(bed.moto.client("iam"), bed.roles["read"], contexts) == [
        "ExplicitlyDenied",  # the session nobody recorded
        "Allowed",  # alice's recorded session under the same grant
        "Allowed",  # bob's
    ]
    again = bed.call("POST", "/credentials", alice, json={"entitlement": "app-read"})
    assert again.status_code == 201 and again.json["grant_id"] == kept["grant_id"]
    assert_every_issue_is_followed_up(bed)


@contextmanager
def database_lost_after_assume_role(bed: Bed, *, statements: str | None) -> Iterator[None]:
    """After AWS answers, every statement (or the first matching ``statements``) fails."""
    with bed.app.app_context():
        issuer = services().issuer
        engine = get_database().engine
    failing = {"on": False}
    original = issuer.assume

    def assume(request: Any) -> Any:
        answer = original(request)
        failing["on"] = True
        return answer

    def fail(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if failing["on"] and (statements is None or statements in statement):
            if statements is not None:
                failing["on"] = False
            raise sa.exc.OperationalError(statement, None, ConnectionError("server went away"))

    issuer.assume = assume  # type: ignore[method-assign]
    sa.event.listen(engine, "before_cursor_execute", fail)
    try:
        yield
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail)
        issuer.assume = original  # type: ignore[method-assign]


def test_a_session_that_cannot_be_recorded_is_withheld_and_denied(bed: Bed) -> None:
    alice = bed.token("alice@example.com", DEV)
    kept = issue(bed, alice, "app-read")
    with database_lost_after_assume_role(bed, statements="INSERT INTO sessions"):
        response = bed.call("POST", "/credentials", alice, json={"entitlement": "app-read"})
    assert response.status_code == 503 and response.json["code"] == "session_not_recorded"
    assert "credentials" not in response.json and "its deny is queued" in response.json["message"]
    asked, unrecorded = events(bed)[-2:]
    assert (asked.action, unrecorded.action) == ("credentials.issue", "credentials.unrecorded")
    name = asked.details["role_session_name"]
    made = made_by_moto(name)
    deny = revocation_for(bed, name)
    assert deny.status == "pending"
    assert deny.drop_after >= made.expiration.replace(tzinfo=UTC) + CLOCK_MARGIN
    apply_denies(bed)
    duration = asked.details["duration_seconds"]
    contexts = [
        context_of(kept["source_identity"], kept["grant_id"], made, duration),
        context_of(
            kept["source_identity"],
            kept["grant_id"],
            made_by_moto(kept["role_session_name"]),
            duration,
        ),
    ]
    assert simulate_sessions(bed.moto.client("iam"), bed.roles["read"], contexts) == [
        "ExplicitlyDenied",
        "Allowed",
    ]
    assert_every_issue_is_followed_up(bed)


def test_when_nobody_can_arm_the_deny_the_scheduler_does(bed: Bed) -> None:
    alice = bed.token("alice@example.com", DEV)
    kept = issue(bed, alice, "app-read")
    with database_lost_after_assume_role(bed, statements=None):
        response = bed.call("POST", "/credentials", alice, json={"entitlement": "app-read"})
    assert response.status_code == 503 and response.json["code"] == "session_not_recorded"
    assert "as soon as the broker's database answers" in response.json["message"]
    asked = events(bed)[-1]
    assert asked.action == "credentials.issue"  # the deny in standby is all that was written
    name = asked.details["role_session_name"]
    assert revocation_for(bed, name).status == "standby"

    # Within IN_FLIGHT_MAX the issuance may still be finishing: left alone.
    assert apply_denies(bed) is None
    assert revocation_for(bed, name).status == "standby"

    later = datetime.now(UTC) + IN_FLIGHT_MAX + timedelta(seconds=1)
    apply_denies(bed, clock=lambda: later)
    deny = revocation_for(bed, name)
    assert deny.status == "applied"
    armed = events(bed)
    unrecorded = [e for e in armed if e.action == "credentials.unrecorded"]
    assert [(e.actor, e.details["role_session_name"]) for e in unrecorded] == [("scheduler", name)]
    made = made_by_moto(name)
    assert deny.drop_after >= made.expiration.replace(tzinfo=UTC) + CLOCK_MARGIN
    duration = asked.details["duration_seconds"]
    contexts = [
        context_of(kept["source_identity"], kept["grant_id"], made, duration),
        context_of(
            kept["source_identity"],
            kept["grant_id"],
            made_by_moto(kept["role_session_name"]),
            duration,
        ),
    ]
    assert simulate_sessions(bed.moto.client("iam"), bed.roles["read"], contexts) == [
        "ExplicitlyDenied",
        "Allowed",
    ]
    assert_every_issue_is_followed_up(bed)


def test_an_answer_aws_refused_leaves_no_deny(proxied_bed: tuple[Bed, FaultProxy]) -> None:
    bed, proxy = proxied_bed
    alice = bed.token("alice@example.com", DEV)
    issue(bed, alice, "app-read")
    proxy.queue("500", "500", "500", "500")  # AWS's own errors: no session was made
    with bed.app.app_context():
        services().issuer._sleep = lambda seconds: None  # no backoff waits in the test
    response = bed.call("POST", "/credentials", alice, json={"entitlement": "app-read"})
    assert response.status_code == 502, response.json
    assert events(bed)[-1].action == "credentials.failed"
    with get_database(bed.app).read_session() as session:
        assert session.scalars(sa.select(Revocation)).all() == []
    assert_every_issue_is_followed_up(bed)


def test_an_answer_after_the_scheduler_gave_up_is_withheld(bed: Bed) -> None:
    alice = bed.token("alice@example.com", DEV)
    issue(bed, alice, "app-read")
    later = datetime.now(UTC) + IN_FLIGHT_MAX + timedelta(seconds=1)
    scheduler = Scheduler(bed.app, iam_client=bed.moto.client("iam"), clock=lambda: later)
    with bed.app.app_context():
        issuer = services().issuer
    original = issuer.assume

    def slow_assume(request: Any) -> Any:
        answer = original(request)
        scheduler.grants().reconcile()  # meanwhile, the scheduler presumed this issuance dead
        return answer

    issuer.assume = slow_assume  # type: ignore[method-assign]
    try:
        response = bed.call("POST", "/credentials", alice, json={"entitlement": "app-read"})
    finally:
        issuer.assume = original  # type: ignore[method-assign]
    assert response.status_code == 503 and response.json["code"] == "session_not_recorded"
    assert "credentials" not in response.json and "too late" in response.json["message"]
    trail = events(bed)
    name = trail[-1].details["role_session_name"]
    assert [(e.action, e.actor) for e in trail[-2:]] == [
        ("credentials.unrecorded", "scheduler"),
        ("credentials.unrecorded", "alice@example.com"),
    ]
    deny = revocation_for(bed, name)
    assert deny.status == "pending"
    assert deny.drop_after >= made_by_moto(name).expiration.replace(tzinfo=UTC) + CLOCK_MARGIN
    with get_database(bed.app).read_session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(IssuedSession)) == 1
    assert_every_issue_is_followed_up(bed)
