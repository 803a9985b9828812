"""The real scheduler process picks up policy changes on its timer and on SIGHUP, and keeps the
last good policy when the files go bad, also when it starts while they are bad."""

from __future__ import annotations

import signal
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from reloadbed import BAD_LINE, BAD_POLICY, events, policy_text, recorded_versions, write_policy
from reloadbed import wait_seconds as wait
from schedbed import start_scheduler_process
from seed import seed_grants

from broker.db import Database
from broker.models import utcnow

INTERVAL = 1.0
"""POLICY_RELOAD_SECONDS of the scheduler under test."""


def config(database: Database, policy_dir: Path, **extra: Any) -> dict[str, Any]:
    """Scheduler settings: no AWS needed (grants without sessions revoke nothing)."""
    return {
        "ENV": "testing",
        "DATABASE_URL": database.url,
        "POLICY_DIR": str(policy_dir),
        "POLICY_RELOAD_SECONDS": INTERVAL,
        "SCHEDULER_SWEEP_SECONDS": 0.5,
        "SCHEDULER_LEASE_STALE_SECONDS": 5,
        **extra,
    }


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then wait (kill if it hangs)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def expired_under(database: Database) -> str:
    """Seed a grant ending now; return the policy version its scheduler expiry was audited with."""
    (seeded,) = seed_grants(
        database,
        1,
        ["arn:aws:iam::123456789012:role/app-read"],
        expires_at=lambda _: utcnow() + timedelta(milliseconds=200),
        now=utcnow(),
        with_session=lambda _: False,
    )

    def audited() -> list[Any]:
        found = events(database, "grant.expired")
        return [e for e in found if e.details.get("grant_id") == seeded.grant_id]

    wait(audited, timeout=15)
    version: str = audited()[0].policy_version
    return version


def scheduler_reloads(database: Database, action: str) -> list[Any]:
    """The scheduler's own reload reports."""
    return [e for e in events(database, action) if e.client == "scheduler"]


def test_scheduler_picks_up_changes_keeps_the_last_good_and_starts_on_it(
    database: Database, tmp_path: Path
) -> None:
    policy_dir = tmp_path / "policies"
    first = write_policy(policy_dir, policy_text("app-read"))
    proc = start_scheduler_process(config(database, policy_dir), tmp_path / "first.log")
    try:
        wait(lambda: recorded_versions(database) == {first}, timeout=30)  # its first check
        assert expired_under(database) == first

        second = write_policy(policy_dir, policy_text("app-read", "app-write"))
        took = wait(lambda: scheduler_reloads(database, "policy.reload"), timeout=10)
        assert took < INTERVAL + 2.0
        (reload,) = scheduler_reloads(database, "policy.reload")
        assert reload.details["version"] == second and reload.details["previous"] == first
        assert expired_under(database) == second

        bad = write_policy(policy_dir, BAD_POLICY)
        wait(lambda: scheduler_reloads(database, "policy.reload_refused"), timeout=10)
        (refused,) = scheduler_reloads(database, "policy.reload_refused")
        assert refused.details["refused_version"] == bad and refused.details["in_force"] == second
        assert BAD_LINE in refused.details["errors"][0]
        assert expired_under(database) == second  # the last good policy keeps deciding
    finally:
        stop(proc)
    assert proc.returncode == 0

    # A scheduler (re)started while the files are bad runs on the last good policy.
    again = start_scheduler_process(config(database, policy_dir), tmp_path / "again.log")
    try:
        assert expired_under(database) == second
        starts = [
            e for e in scheduler_reloads(database, "policy.reload_refused") if e.details["at_start"]
        ]
        assert len(starts) == 1 and starts[0].details["source"] == "database"
        assert again.poll() is None
    finally:
        stop(again)
    log = (tmp_path / "again.log").read_text()
    assert "serving the last good policy" in log and BAD_LINE in log


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # nothing database-specific here
def test_sighup_makes_the_scheduler_reread_at_once(database: Database, tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    first = write_policy(policy_dir, policy_text("app-read"))
    settings = config(database, policy_dir, POLICY_RELOAD_SECONDS=3600)
    proc = start_scheduler_process(settings, tmp_path / "hup.log")
    try:
        wait(lambda: recorded_versions(database) == {first}, timeout=30)
        second = write_policy(policy_dir, policy_text("app-read", "app-write"))
        proc.send_signal(signal.SIGHUP)
        took = wait(lambda: scheduler_reloads(database, "policy.reload"), timeout=10)
        assert took < 3.0
        assert scheduler_reloads(database, "policy.reload")[0].details["version"] == second
        assert proc.poll() is None
    finally:
        stop(proc)
    assert "SIGHUP received" in (tmp_path / "hup.log").read_text()
