"""The real scheduler process: killed mid-sweep and restarted, and two of them on PostgreSQL."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from apibed import READ_POLICY, Bed
from aws import create_role
from schedbed import (
    app_config,
    needs_iamsim,
    role_policies,
    session_context,
    simulate_sessions,
    start_scheduler_process,
    wait_for,
)
from seed import Seeded, seed_grants
from sqlalchemy import func, select

from broker.audit import verify_database
from broker.db import Database, get_database
from broker.models import AuditEvent, Grant, Revocation, utcnow
from broker.revocation import POLICY_NAME


def _count(database: Database, *where: Any) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(Grant).where(*where)) or 0)


def _settled(database: Database, total: int) -> bool:
    with database.session() as session:
        expired = session.scalar(
            select(func.count()).select_from(Grant).where(Grant.status == "expired")
        )
        pending = session.scalar(
            select(func.count()).select_from(Revocation).where(Revocation.status == "pending")
        )
    return expired == total and pending == 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _assert_exactly_once(database: Database, seeded: list[Seeded]) -> None:
    """One grant.expired per grant, each revocation applied by one event, chain valid."""
    with database.session() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        revocations = session.scalars(select(Revocation)).all()
        assert verify_database(session).ok
    expired = Counter(e.details["grant_id"] for e in events if e.action == "grant.expired")
    assert set(expired) == {s.grant_id for s in seeded}
    assert set(expired.values()) == {1}
    applied = Counter(
        rid for e in events if e.action == "revocation.applied" for rid in e.details["applied"]
    )
    assert set(applied) == {r.id for r in revocations}
    assert set(applied.values()) == {1}
    live = {s.grant_id for s in seeded if s.issued_at is not None}
    assert {r.grant_id for r in revocations} == live
    assert {r.status for r in revocations} == {"applied"}


def _roles(bed: Bed, count: int) -> list[str]:
    iam = bed.moto.client("iam")
    suffix = str(time.monotonic_ns())[-8:]
    return [
        create_role(
            iam, f"bulk-{suffix}-{i}", max_session_seconds=3600, policies={"r": READ_POLICY}
        )
        for i in range(count)
    ]


@pytest.mark.slow
def test_sigkill_mid_sweep_then_restart_expires_everything_once(
    bed: Bed, database: Database, tmp_path: Path
) -> None:
    roles = _roles(bed, 4)
    now = utcnow()
    total = 600
    seeded = seed_grants(
        get_database(bed.app),
        total,
        roles,
        expires_at=lambda i: now - timedelta(minutes=1, seconds=i % 50),
        now=now,
        with_session=lambda i: i % 5 == 0,
    )
    # Small batches with a pause between them make the sweep last seconds, so the kill lands
    # inside it on any machine.
    config = app_config(
        database,
        bed.moto,
        bed.policy_dir,
        SCHEDULER_BATCH_SIZE=10,
        SCHEDULER_BATCH_PAUSE_SECONDS=0.1,
    )
    first = start_scheduler_process(config, tmp_path / "first.log")
    try:
        wait_for(lambda: _count(database, Grant.status == "expired") > 0, timeout=60, interval=0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    done_before = _count(database, Grant.status == "expired")
    assert 0 < done_before < total, "the kill should land in the middle of the sweep"

    second = start_scheduler_process(config, tmp_path / "second.log")
    try:
        wait_for(lambda: _settled(database, total), timeout=90, interval=0.2)
    finally:
        _stop(second)
    _assert_exactly_once(database, seeded)
    iam = bed.moto.client("iam")
    for role in roles:
        doc = str(role_policies(iam, role)[POLICY_NAME])
        assert all(s.source_identity in doc for s in seeded if s.issued_at and s.role_arn == role)


@needs_iamsim
@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite refuses a second one
def test_two_schedulers_on_postgresql_expire_each_grant_once(
    bed: Bed, database: Database, tmp_path: Path
) -> None:
    roles = _roles(bed, 5)
    start = utcnow() + timedelta(seconds=5)  # both processes are up by then
    rng = random.Random(6)
    offsets = [rng.uniform(0, 10) for _ in range(1000)]
    seeded = seed_grants(
        get_database(bed.app),
        1000,
        roles,
        expires_at=lambda i: start + timedelta(seconds=offsets[i]),
        now=utcnow(),
    )
    config = app_config(database, bed.moto, bed.policy_dir, SCHEDULER_SWEEP_SECONDS=2)
    procs = [start_scheduler_process(config, tmp_path / f"s{n}.log") for n in range(2)]
    try:
        wait_for(lambda: _settled(database, 1000), timeout=90, interval=0.5)
        assert all(p.poll() is None for p in procs), "a scheduler died"
    finally:
        for proc in procs:
            _stop(proc)
    _assert_exactly_once(database, seeded)
    logs = [(tmp_path / f"s{n}.log").read_text() for n in range(2)]
    assert all("expired" in log for log in logs), "both schedulers should have taken a share"

    iam = bed.moto.client("iam")
    for role in roles:
        mine = [s for s in seeded if s.role_arn == role]
        contexts = [
            session_context(s.source_identity, s.issued_at, s.grant_id) for s in mine if s.issued_at
        ]
        contexts.append(session_context("outsider@example.com", start, "other-grant"))
        got = simulate_sessions(iam, role, contexts)
        assert got == ["ExplicitlyDenied"] * len(mine) + ["Allowed"]
