"""Helpers for scheduler tests: config, clocks, waiting, reading policies back, processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apibed import Bed
from iamsim import NODE_DIR, simulate

from broker.db import Database
from broker.revocation import SESSION_TAG

ROOT = Path(__file__).resolve().parents[2]
needs_iamsim = pytest.mark.skipif(
    not (NODE_DIR / "node_modules" / "@cloud-copilot" / "iam-simulate").is_dir(),
    reason=f"IAM simulator not installed: run `npm ci` in {NODE_DIR}",
)


class Clock:
    """A settable clock (time travel for the scheduler's passes)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def app_config(database: Database, moto: Any, policy_dir: Path, **extra: Any) -> dict[str, Any]:
    """Test configuration: a migrated database, moto, short scheduler intervals."""
    config: dict[str, Any] = {
        "ENV": "testing",
        "TESTING": True,
        "DATABASE_URL": database.url,
        "POLICY_DIR": str(policy_dir),
        "AWS_ENDPOINT_URL": moto.endpoint_url,
        "AWS_REGION": "us-east-1",
        "SCHEDULER_SWEEP_SECONDS": 1.0,
        "SCHEDULER_LEASE_STALE_SECONDS": 5,
    }
    config.update(extra)
    return config


def role_name(arn: str) -> str:
    """The role name of a role ARN."""
    return arn.rsplit("/", 1)[-1]


def role_policies(iam: Any, role_arn: str) -> dict[str, dict[str, Any]]:
    """Every inline policy on the role, as IAM (moto) returns it."""
    name = role_name(role_arn)
    names = iam.list_role_policies(RoleName=name)["PolicyNames"]
    return {n: iam.get_role_policy(RoleName=name, PolicyName=n)["PolicyDocument"] for n in names}


def session_context(who: str, issued: datetime, grant: str | None) -> dict[str, str]:
    """The request context IAM sees for a broker session."""
    context = {
        "aws:SourceIdentity": who,
        "aws:TokenIssueTime": issued.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if grant is not None:
        context[f"aws:PrincipalTag/{SESSION_TAG}"] = grant
    return context


def simulate_sessions(iam: Any, role_arn: str, contexts: list[dict[str, str]]) -> list[str]:
    """One S3 read per session context, evaluated against the role's policies read from IAM."""
    requests = [
        {"action": "s3:GetObject", "resource": "arn:aws:s3:::data/key", "context": c}
        for c in contexts
    ]
    principal = f"arn:aws:sts::123456789012:assumed-role/{role_name(role_arn)}/broker-session"
    return simulate(list(role_policies(iam, role_arn).values()), None, requests, principal)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return it, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def scheduler_env(config: dict[str, Any]) -> dict[str, str]:
    """Environment for a `python -m broker.scheduler` subprocess with this configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    for key, value in config.items():
        if key != "TESTING":
            env[f"BROKER_{key}"] = value if isinstance(value, str) else json.dumps(value)
    env["AWS_ACCESS_KEY_ID"] = "testing"
    env["AWS_SECRET_ACCESS_KEY"] = "testing"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_scheduler_process(config: dict[str, Any], log_path: Path) -> subprocess.Popen[bytes]:
    """Start the real scheduler command as a child process, logging to ``log_path``."""
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "broker.scheduler"],
        cwd=ROOT,
        env=scheduler_env(config),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@dataclass
class Person:
    """A person with a token for the bed's API."""

    email: str
    token: str


def issue(bed: Bed, token: str, entitlement: str) -> dict[str, Any]:
    """Issue credentials through the real API; return the response body."""
    response = bed.call("POST", "/credentials", token, json={"entitlement": entitlement})
    assert response.status_code == 201, response.json
    body: dict[str, Any] = response.json
    return body
