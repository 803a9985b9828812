"""The sweep: contractors at their end date, unapproved requests, reconciliation, the lease."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from apibed import Bed
from schedbed import ROOT, app_config, issue, role_policies, scheduler_env
from sqlalchemy import select, update

from broker import create_app
from broker.auth.identity import derive_source_identity
from broker.db import get_database
from broker.grants import RequestMeta
from broker.models import AuditEvent, Grant, Principal, Revocation, utcnow
from broker.policy import Identity
from broker.revocation import POLICY_NAME
from broker.scheduler import Scheduler, SchedulerAlreadyRunning
from broker.services import grant_service


def _actions(bed: Bed) -> list[str]:
    with get_database(bed.app).session() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all())


def test_contractor_past_end_date_is_ended_and_denied(bed: Bed) -> None:
    cora = bed.token("cora@contractor.example", ("developers",))
    issued = issue(bed, cora, "app-read")
    with get_database(bed.app).session() as session:
        session.execute(
            update(Principal)
            .where(Principal.email == "cora@contractor.example")
            .values(valid_until=utcnow() - timedelta(seconds=1))
        )
    result = Scheduler(bed.app).sweep()
    assert result.contractors_ended == [issued["grant_id"]]
    with get_database(bed.app).session() as session:
        grant = session.get_one(Grant, issued["grant_id"])
        assert grant.status == "expired" and "contractor" in (grant.end_reason or "")
        scopes = sorted(session.scalars(select(Revocation.scope)).all())
        assert set(session.scalars(select(Revocation.status)).all()) == {"applied"}
    assert scopes == ["person", "person"]  # the grant's own, and the person-wide one
    doc = role_policies(bed.moto.client("iam"), bed.roles["read"])[POLICY_NAME]
    assert issued["source_identity"] in str(doc)
    assert Scheduler(bed.app).sweep().contractors_ended == []  # once


def test_unapproved_request_lapses(bed: Bed) -> None:
    sam = bed.token("sam@example.com", ("sre",))
    response = bed.call(
        "POST", "/grants", sam, json={"entitlement": "app-admin", "reason": "INC-1"}
    )
    assert response.status_code == 202, response.json
    grant_id = response.json["grant"]["id"]
    scheduler = Scheduler(bed.app)
    assert scheduler.sweep().lapsed == []
    with get_database(bed.app).session() as session:
        session.get_one(Grant, grant_id).created_at = utcnow() - timedelta(days=2)
    assert scheduler.sweep().lapsed == [grant_id]
    assert _actions(bed).count("grant.lapsed") == 1


def test_reconcile_queues_a_deny_for_an_uncovered_live_session(bed: Bed) -> None:
    alice = bed.token("alice@example.com", ("developers",))
    issued = issue(bed, alice, "app-read")
    with get_database(bed.app).session() as session:
        session.get_one(Grant, issued["grant_id"]).status = "revoked"  # behind the broker's back
    scheduler = Scheduler(bed.app)
    first = scheduler.sweep()
    assert len(first.reconciled) == 1
    assert first.revocations.applied[bed.roles["read"]] == first.reconciled
    assert scheduler.sweep().reconciled == []  # now covered
    assert _actions(bed).count("revocation.queued") == 1
    doc = role_policies(bed.moto.client("iam"), bed.roles["read"])[POLICY_NAME]
    assert issued["source_identity"] in str(doc)


def test_second_scheduler_on_sqlite_refuses(bed: Bed, database: Any) -> None:
    if database.dialect != "sqlite":
        first, second = Scheduler(bed.app), Scheduler(bed.app)
        first.start()
        second.start()  # PostgreSQL: any number, each with its own heartbeat row
        second.stop()
        first.stop()
        return
    first = Scheduler(bed.app)
    first.start()
    try:
        with pytest.raises(SchedulerAlreadyRunning, match="Another scheduler .* SQLite"):
            Scheduler(bed.app).start()
        config = app_config(database, bed.moto, bed.policy_dir)
        proc = subprocess.run(
            [sys.executable, "-m", "broker.scheduler"],
            cwd=ROOT,
            env=scheduler_env(config),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1
        message = proc.stderr.decode()
        assert "Another scheduler" in message and "only one scheduler may run" in message
        assert "PostgreSQL" in message
    finally:
        first.stop()
    again = Scheduler(bed.app)
    again.start()  # a clean stop gave the lease back
    again.stop()


def test_stale_lease_is_taken_over(bed: Bed, database: Any) -> None:
    from broker.models import SchedulerLease

    first = Scheduler(bed.app)
    if database.dialect != "sqlite":  # PostgreSQL: one heartbeat row per process, no singleton
        first.start()
        with get_database(bed.app).session() as session:
            names = session.scalars(select(SchedulerLease.name)).all()
        first.stop()
        assert names == [first.lease.name] and first.lease.name.startswith("node:")
        return
    first.lease.acquire()  # "started", then never heartbeats again
    with get_database(bed.app).session() as session:
        lease = session.get_one(SchedulerLease, "scheduler")
        lease.holder = "elsewhere:1:dead"
        lease.heartbeat_at = utcnow() - timedelta(seconds=6)
    second = Scheduler(bed.app)
    second.start()
    second.stop()


def test_metrics_are_read_from_the_database(bed: Bed, tmp_path: Path) -> None:
    from broker import metrics

    alice = bed.token("alice@example.com", ("developers",))
    issue(bed, alice, "app-read")
    bed.call("POST", "/credentials", alice, json={"entitlement": "app-admin"})  # denied
    app = create_app(dict(bed.app.config, SECRET_KEY="x" * 32))
    if "metrics" not in app.blueprints:
        app.register_blueprint(metrics.bp)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert "broker_credentials_issued_total 1.0" in text
    assert 'broker_denials_total{action="credentials.issue"} 1.0' in text
    assert 'broker_grants{status="active"} 1.0' in text
    assert 'broker_revocations{status="pending"} 0.0' in text
    assert "broker_revocation_latency_seconds_count 0.0" in text


def test_iam_policies_command_prints_policies_for_the_policy_roles(bed: Bed) -> None:
    from click.testing import CliRunner

    from broker.iam_setup import iam_policies_command

    result = CliRunner().invoke(
        iam_policies_command,
        ["--policy-dir", str(bed.policy_dir), "--broker-principal", "arn:aws:iam::1:role/b"],
    )
    assert result.exit_code == 0, result.output
    for arn in bed.roles.values():
        assert arn in result.output
    assert "sts:SetSourceIdentity" in result.output and "sts:TagSession" in result.output
    assert "iam:PutRolePolicy" in result.output and POLICY_NAME in result.output
    bad = CliRunner().invoke(iam_policies_command, ["--role", "not-an-arn"])
    assert bad.exit_code != 0 and "not an IAM role ARN" in bad.output


def test_scheduler_serves_its_job_counters_on_loopback(bed: Bed) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bed.app.config["SCHEDULER_METRICS_PORT"] = port
    scheduler = Scheduler(bed.app, sweep_seconds=0.2)
    scheduler.start()
    try:
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline and 'job="sweep"' not in text:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            time.sleep(0.2)
        assert 'broker_scheduler_job_runs_total{job="sweep"}' in text
    finally:
        scheduler.stop()


def test_admin_cut_off_denies_every_role_the_person_holds_sessions_for(bed: Bed) -> None:
    dev = bed.token("dev@example.com", ("developers",))
    other = bed.token("other@example.com", ("developers",))
    issue(bed, dev, "app-read")
    issue(bed, dev, "prod-read")  # same role, another entitlement and grant
    issue(bed, other, "app-read")
    admin = Identity(
        issuer="urn:test",
        subject="sec@example.com",
        email="sec@example.com",
        groups=frozenset({"security-admins"}),
    )
    with bed.app.test_request_context():
        service = grant_service()
        caller = service.sign_in(admin, RequestMeta())
        with get_database().session() as session:
            dev_id = session.scalar(
                select(Principal.id).where(Principal.email == "dev@example.com")
            )
        assert service.cut_off(caller, str(dev_id), reason="left", meta=RequestMeta()) == 2
    Scheduler(bed.app).sweep()
    policy = role_policies(bed.moto.client("iam"), bed.roles["read"])[POLICY_NAME]
    people = [
        who
        for statement in policy["Statement"]
        for who in statement["Condition"].get("StringEquals", {}).get("aws:SourceIdentity", [])
    ]
    assert people == [derive_source_identity("urn:test", "dev@example.com")]  # nobody else
    assert bed.call("GET", "/me", dev).status_code in (401, 403)  # and their token is dead
    other_si = derive_source_identity("urn:test", "other@example.com")
    assert issue(bed, other, "app-read")["source_identity"] == other_si
