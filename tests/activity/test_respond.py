"""Detections that act: a contractor's p4d.24xlarge launch revokes the grant, and the role denies
the grant's sessions within 10 s of the file landing (iam-simulate over the policies read back
from moto); the same path as an admin's revoke, audited, once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from activitybed import ActivityBed, make_bed
from schedbed import (
    issue,
    needs_iamsim,
    role_policies,
    session_context,
    simulate_sessions,
    wait_for,
)
from sqlalchemy import select
from trailbed import assume_role_record, call_record, run_instances

from broker.db import Database, get_database
from broker.models import AuditEvent, Detection, Grant, IssuedSession, Principal, utcnow
from broker.revocation import POLICY_NAME
from broker.scheduler import Scheduler


@pytest.fixture
def queued_bed(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[ActivityBed]:
    """An activity bed whose bucket announces new files on SQS, read every half second."""
    found = make_bed(database, moto_server, tmp_path, queue=True, CLOUDTRAIL_QUEUE_SECONDS=0.5)
    yield found
    found.app.extensions["broker.db"].dispose()


def _row(bed: ActivityBed, session_id: str) -> IssuedSession:
    with get_database(bed.app).read_session() as session:
        return session.get_one(IssuedSession, session_id)


def _actions(bed: ActivityBed) -> list[str]:
    with get_database(bed.app).read_session() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all())


@needs_iamsim
def test_gpu_launch_by_a_contractor_is_denied_within_ten_seconds(queued_bed: ActivityBed) -> None:
    bed = queued_bed
    cora = issue(bed, bed.token("cora@contractor.example", ("developers",)), "app-read")
    alice = issue(bed, bed.token("alice@example.com", ("developers",)), "app-read")
    role = bed.roles["read"]
    key = bed.key_of(cora)
    scheduler = Scheduler(bed.app, sweep_seconds=60)
    scheduler.start()
    try:
        now = utcnow()
        assert bed.trail is not None
        bed.trail.put(
            [
                assume_role_record(key, now - timedelta(seconds=30)),
                call_record(key, now, "ec2.amazonaws.com", "DescribeInstanceTypes"),
                run_instances(key, now, "p4d.24xlarge"),
            ],
            at=now,
        )
        landed = utcnow()
        iam = bed.moto.client("iam")

        def denied() -> Any:
            doc = role_policies(iam, role).get(POLICY_NAME)
            return doc is not None and key.source_identity in str(doc) and utcnow()

        seen = wait_for(denied, timeout=10)
    finally:
        scheduler.stop()
    assert seen - landed < timedelta(seconds=10), seen - landed
    rows = [_row(bed, cora["session_id"]), _row(bed, alice["session_id"])]
    contexts = [session_context(r.source_identity, r.issued_at, r.grant_id) for r in rows]
    assert simulate_sessions(bed.moto.client("iam"), role, contexts) == [
        "ExplicitlyDenied",  # the contractor's session, issued before the detection
        "Allowed",  # a colleague's session on the same role
    ]
    with get_database(bed.app).read_session() as session:
        grant = session.get_one(Grant, cora["grant_id"])
        assert (grant.status, grant.ended_by) == ("revoked", "detection:crypto-mining-contractor")
        assert grant.end_reason is not None and "instanceType p4d.24xlarge" in grant.end_reason
        assert session.get_one(Grant, alice["grant_id"]).status == "active"
        detection = session.scalars(select(Detection)).one()
        assert (detection.rule_id, detection.response, detection.outcome) == (
            "crypto-mining-contractor",
            "revoke_grant",
            "revoked",
        )
        fired = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "detection.fired")
        ).one()
    assert fired.actor == "scheduler" and fired.target == "cora@contractor.example"
    assert fired.details["outcome"] == "revoked" and fired.details["severity"] == "critical"
    actions = _actions(bed)
    assert actions.count("grant.revoked") == 1 and actions.count("revocation.applied") == 1


def test_cloudtrail_tampering_cuts_the_person_off(bed: ActivityBed) -> None:
    token = bed.token("alice@example.com", ("developers",))
    first = issue(bed, token, "app-read")
    second = issue(bed, token, "prod-read")
    key = bed.key_of(first)
    now = utcnow()
    assert bed.trail is not None
    bed.trail.put(
        [
            call_record(
                key,
                now,
                "cloudtrail.amazonaws.com",
                "StopLogging",
                error_code="AccessDenied",
                params={"name": "org-trail"},
            ),
            call_record(key, now, "cloudtrail.amazonaws.com", "DeleteTrail"),
        ],
        at=now,
    )
    result = bed.ingestor().scan()
    assert result.files[0].detections == ["cloudtrail-tampering", "cloudtrail-tampering"]
    with get_database(bed.app).read_session() as session:
        person = session.scalars(
            select(Principal).where(Principal.email == "alice@example.com")
        ).one()
        assert person.disabled and "cloudtrail:StopLogging" in str(person.disabled_reason)
        statuses = {g.status for g in session.scalars(select(Grant))}
        outcomes = sorted(d.outcome for d in session.scalars(select(Detection)))
    assert statuses == {"revoked"}
    assert outcomes == ["already_cut_off", "cut_off"]
    response = bed.call("POST", "/credentials", token, json={"entitlement": "app-read"})
    assert response.status_code == 401  # their broker tokens were revoked with them
    assert second["grant_id"] != first["grant_id"]
    assert _actions(bed).count("principal.cut_off") == 1


def test_persistence_attempt_revokes_only_that_grant(bed: ActivityBed) -> None:
    token = bed.token("alice@example.com", ("developers",))
    first = issue(bed, token, "app-read")
    other = issue(bed, token, "prod-read")
    now = utcnow()
    assert bed.trail is not None
    bed.trail.put(
        [
            call_record(
                bed.key_of(first),
                now,
                "iam.amazonaws.com",
                "CreateAccessKey",
                params={"userName": "backdoor"},
            ),
        ],
        at=now,
    )
    bed.ingestor().scan()
    with get_database(bed.app).read_session() as session:
        assert session.get_one(Grant, first["grant_id"]).status == "revoked"
        assert session.get_one(Grant, other["grant_id"]).status == "active"


def test_the_same_event_in_two_files_fires_once(bed: ActivityBed) -> None:
    cora = issue(bed, bed.token("cora@contractor.example", ("developers",)), "app-read")
    record = run_instances(bed.key_of(cora), utcnow(), "g5.48xlarge")
    assert bed.trail is not None
    bed.trail.put([record], at=utcnow() - timedelta(minutes=1))
    bed.trail.put([record], at=utcnow())
    result = bed.ingestor().scan()
    assert len(result.with_status("done")) == 2
    with get_database(bed.app).read_session() as session:
        assert len(session.scalars(select(Detection)).all()) == 1
    assert _actions(bed).count("detection.fired") == 1


def test_staff_gpu_launch_only_alerts(bed: ActivityBed) -> None:
    alice = issue(bed, bed.token("alice@example.com", ("developers",)), "app-read")
    assert bed.trail is not None
    bed.trail.put([run_instances(bed.key_of(alice), utcnow(), "p5.48xlarge")], at=utcnow())
    result = bed.ingestor().scan()
    assert result.files[0].detections == ["gpu-instances-staff"]
    with get_database(bed.app).read_session() as session:
        assert session.get_one(Grant, alice["grant_id"]).status == "active"
        assert session.scalars(select(Detection.outcome)).one() == "alerted"
