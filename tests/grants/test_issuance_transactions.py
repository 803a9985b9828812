"""Issuing credentials keeps AWS out of database transactions, and many processes issuing at
once keep one valid chain with each session's two audit events (issue, issued)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from apibed import Bed

from broker.audit import verify_database
from broker.db import get_database
from broker.models import AuditEvent, IssuedSession
from broker.services import EXTENSION, services
from broker.sts import RoleLimits, StsIssuer

DEV = ("developers",)
WORKER = Path(__file__).resolve().parent.parent / "helpers" / "issue_worker.py"


class OpenTransactions:
    """How many database transactions each thread has open (engine begin/commit/rollback)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._local = threading.local()
        sa.event.listen(engine, "begin", lambda conn: self._add(1))
        sa.event.listen(engine, "commit", lambda conn: self._add(-1))
        sa.event.listen(engine, "rollback", lambda conn: self._add(-1))

    def _add(self, delta: int) -> None:
        self._local.open = max(self.open() + delta, 0)

    def open(self) -> int:
        """Transactions open on the calling thread."""
        return int(getattr(self._local, "open", 0))


class Instrumented:
    """A boto3 client that records, for every call, how many transactions were open."""

    def __init__(self, client: Any, name: str, open_transactions: OpenTransactions) -> None:
        self._client = client
        self._name = name
        self._open = open_transactions
        self.calls: list[tuple[str, int]] = []

    def __getattr__(self, attribute: str) -> Any:
        found = getattr(self._client, attribute)
        if not callable(found) or attribute.startswith("_") or attribute == "can_paginate":
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((f"{self._name}.{attribute}", self._open.open()))
            return found(*args, **kwargs)

        return call


@pytest.fixture
def instrumented(bed: Bed) -> Iterator[tuple[Instrumented, Instrumented]]:
    """The bed's STS and IAM clients, instrumented (role limits start cold)."""
    app = bed.app
    shared = services(app)
    watcher = OpenTransactions(get_database(app).engine)
    sts = Instrumented(shared.sts, "sts", watcher)
    iam = Instrumented(shared.iam, "iam", watcher)
    app.extensions[EXTENSION] = dataclasses.replace(
        shared, sts=sts, iam=iam, issuer=StsIssuer(sts), role_limits=RoleLimits(iam)
    )
    yield sts, iam


def test_no_aws_call_happens_inside_an_open_transaction(
    bed: Bed, instrumented: tuple[Instrumented, Instrumented]
) -> None:
    sts, iam = instrumented
    token = bed.token("dev@example.com", DEV)
    first = bed.call("POST", "/credentials", token, json={"entitlement": "app-read"})
    again = bed.call("POST", "/credentials", token, json={"entitlement": "app-read"})
    assert (first.status_code, again.status_code) == (201, 201), first.get_data(as_text=True)
    calls = sts.calls + iam.calls
    assert [c for c in calls if c[0] == "sts.assume_role"], calls
    assert [c for c in calls if c[0] == "iam.get_role"], calls  # the role limit, cold cache
    assert [c for c in calls if c[1]] == [], f"AWS called inside a transaction: {calls}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_four_processes_times_a_hundred_issuances_keep_one_chain(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    config = {
        k: bed.app.config[k]
        for k in ("DATABASE_URL", "POLICY_DIR", "AWS_ENDPOINT_URL", "AWS_REGION")
    }
    config["ENV"] = "testing"
    config["RATE_LIMIT_ISSUE_PER_MINUTE"] = 10_000  # this test is about the chain, not limits
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config), token, "100", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results, errors = [], []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
        errors.extend(line for line in err.splitlines() if line.startswith("error: "))
    assert results == [{"201": 100}] * 4, errors
    with bed.app.app_context(), get_database().session() as session:
        assert verify_database(session).ok
        sessions = session.scalars(sa.select(IssuedSession)).all()
        events = session.scalars(
            sa.select(AuditEvent).where(
                AuditEvent.action.in_(("credentials.issue", "credentials.issued"))
            )
        ).all()
    assert len(sessions) == 400
    issue = sorted(e.details["role_session_name"] for e in events if e.action.endswith("issue"))
    issued = sorted(e.details["session_id"] for e in events if e.action.endswith("issued"))
    assert issue == sorted(s.role_session_name for s in sessions)  # exactly one each
    assert issued == sorted(s.id for s in sessions)
