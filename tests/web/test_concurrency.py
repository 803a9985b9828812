"""Several broker processes issuing at once keep one valid audit chain (PostgreSQL and SQLite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from apibed import Bed

from broker.audit import verify_database
from broker.db import get_database
from broker.models import AuditEvent, IssuedSession

WORKER = Path(__file__).resolve().parent.parent / "helpers" / "issue_worker.py"


def test_two_processes_times_fifty_issuances_keep_the_chain(bed: Bed) -> None:
    token = bed.token("dev@example.com", ("developers",))
    bed.call("POST", "/grants", token, json={"entitlement": "app-read", "duration": "4h"})
    config = {
        k: bed.app.config[k]
        for k in ("DATABASE_URL", "POLICY_DIR", "AWS_ENDPOINT_URL", "AWS_REGION")
    }
    config["ENV"] = "testing"
    config["RATE_LIMIT_ISSUE_PER_MINUTE"] = 10_000  # this test is about the chain, not limits
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config), token, "50", "8"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results, errors = [], []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
        errors.extend(line for line in err.splitlines() if line.startswith("error: "))
    assert results == [{"201": 50}, {"201": 50}], errors
    with bed.app.app_context(), get_database().session() as session:
        assert verify_database(session).ok
        issued = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.action == "credentials.issued")
        ).all()
        sessions = session.scalars(sa.select(IssuedSession)).all()
    assert len(sessions) == 100
    per_session = [e.details["session_id"] for e in issued]
    assert sorted(per_session) == sorted(s.id for s in sessions)  # exactly one event each
