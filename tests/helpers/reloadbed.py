"""Helpers for policy reload tests: policy versions to write, tokens, audit events, processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from schedbed import ROOT, scheduler_env
from sqlalchemy import select

from broker.auth import tokens
from broker.db import Database
from broker.models import AuditEvent, PolicyVersion, utcnow
from broker.policy import Identity, load_policy_dir, read_policy_files

ACCOUNT = "123456789012"


def policy_text(*entitlements: str) -> str:
    """A valid one-file policy: each named entitlement open to the developers group."""
    rules = "".join(
        f"  - id: {name}\n"
        f"    role_arn: arn:aws:iam::{ACCOUNT}:role/{name}\n"
        "    allow: {groups: [developers]}\n"
        for name in entitlements
    )
    return f"version: 1\npeople: []\ndeny: []\nentitlements:\n{rules}"


BAD_POLICY = policy_text("app-read") + "    max_duration: 99h\n"
"""A policy whose line 8 asks for more than STS allows."""
BAD_LINE = "policy.yaml:8:"


def write_policy(directory: Path, text: str) -> str:
    """Write policy.yaml the way an editor does (in place); return the version it hashes to."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.yaml").write_text(text)
    return read_policy_files(directory).version


def mint_token(database: Database, policy_dir: Path, email: str = "dev@example.com") -> str:
    """A broker API token for a developer, as the policy in `policy_dir` sees them."""
    identity = Identity(
        issuer="urn:test",
        subject=email,
        email=email,
        groups=frozenset({"developers"}),
        amr=("pwd", "mfa"),
    )
    person = load_policy_dir(policy_dir).evaluator.resolve(identity)
    with database.session() as session:
        plaintext, _ = tokens.mint_for_person(
            session, person, name="test", kind="admin", ttl=timedelta(hours=2), now=utcnow()
        )
    return plaintext


def events(database: Database, *actions: str) -> list[AuditEvent]:
    """Audit events with these actions, oldest first."""
    with database.session() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action.in_(actions)).order_by(AuditEvent.seq)
            ).all()
        )


def recorded_versions(database: Database) -> set[str]:
    """Policy versions recorded in the database as put in force."""
    with database.session() as session:
        return set(session.scalars(select(PolicyVersion.version)).all())


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_gunicorn(
    config: dict[str, Any], port: int, log_path: Path, workers: int = 2
) -> subprocess.Popen[bytes]:
    """Start `gunicorn wsgi:app` as in production, on a loopback port, logging to a file."""
    log = log_path.open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "5",
            "wsgi:app",
        ],
        cwd=ROOT,
        env=scheduler_env(config),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def children(pid: int) -> set[int]:
    """Live child processes of `pid` (Linux /proc)."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def wait_seconds(predicate: Any, timeout: float, interval: float = 0.05) -> float:
    """Poll until ``predicate()`` is truthy; return how long it took, or fail."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - start
