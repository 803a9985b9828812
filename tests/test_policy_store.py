"""Policy reload in a web app: changes picked up, bad files refused and reported, last good kept."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from reloadbed import (
    BAD_LINE,
    BAD_POLICY,
    events,
    mint_token,
    policy_text,
    recorded_versions,
    wait_seconds,
    write_policy,
)

from broker import create_app
from broker.db import Database
from broker.errors import ConfigError
from broker.migrate import upgrade
from broker.policy_store import PolicyStore, fingerprint, get_policy

INTERVAL = 0.2
"""POLICY_RELOAD_SECONDS in these tests."""


class Records(logging.Handler):
    """Keeps the policy store's and its reports' log records (broker logs may not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("broker.policy_store", "broker.policy_reports")):
            self.records.append(record)

    def messages(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def logs() -> Iterator[Records]:
    """Log records of the policy store and its reports."""
    handler = Records()
    logger = logging.getLogger("broker")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


class Ticks:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_app(database: Database, policy_dir: Path) -> Flask:
    """A web app over the database and directory, checking the policy every INTERVAL."""
    return create_app(
        {
            "ENV": "testing",
            "TESTING": True,
            "DATABASE_URL": database.url,
            "POLICY_DIR": str(policy_dir),
            "POLICY_RELOAD_SECONDS": INTERVAL,
        }
    )


def served(app: Flask, token: str) -> list[str]:
    """Entitlement ids the app serves to the developer right now (a real API request)."""
    response = app.test_client().get(
        "/api/v1/entitlements", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.json
    return sorted(e["id"] for e in response.json["entitlements"])


def readyz(app: Flask) -> dict[str, Any]:
    """The /readyz body (asserting it says ready)."""
    response = app.test_client().get("/readyz")
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json
    return body


def metric(app: Flask, line_start: str) -> float:
    """The value of the first /metrics sample line starting with `line_start`."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in /metrics:\n{text}")


def test_good_change_is_served_within_the_interval(database: Database, tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    first = write_policy(policy_dir, policy_text("app-read"))
    app = make_app(database, policy_dir)
    token = mint_token(database, policy_dir)
    assert served(app, token) == ["app-read"]
    assert recorded_versions(database) == {first}  # recorded by the first request's check

    second = write_policy(policy_dir, policy_text("app-read", "app-write"))
    took = wait_seconds(lambda: served(app, token) == ["app-read", "app-write"], timeout=5)
    assert took < INTERVAL + 1.0
    assert get_policy(app).version == second
    assert recorded_versions(database) == {first, second}
    (reload,) = events(database, "policy.reload")
    assert reload.decision == "allow" and reload.client == "web"
    assert reload.policy_version == second
    assert reload.details["version"] == second and reload.details["previous"] == first
    assert reload.details["files"] == ["policy.yaml"]
    assert readyz(app)["policy"]["files_on_disk"] == "in force"
    assert metric(app, 'broker_policy_reloads_total{outcome="in_force"}') == 1


def test_bad_files_are_refused_reported_and_the_last_good_policy_serves(
    database: Database, tmp_path: Path, logs: Records
) -> None:
    policy_dir = tmp_path / "policies"
    good = write_policy(policy_dir, policy_text("app-read", "app-write"))
    app = make_app(database, policy_dir)
    token = mint_token(database, policy_dir)
    assert served(app, token) == ["app-read", "app-write"]

    bad = write_policy(policy_dir, BAD_POLICY)
    # The web checks on requests: keep asking, as a load balancer's probe would.
    wait_seconds(lambda: readyz(app)["policy"]["files_on_disk"] == "refused", timeout=5)
    for _ in range(5):  # the same bad files are reported once, however often they are checked
        assert served(app, token) == ["app-read", "app-write"]
        time.sleep(INTERVAL)
    (refused,) = events(database, "policy.reload_refused")
    assert refused.decision == "deny" and refused.policy_version == good
    assert refused.details["refused_version"] == bad and refused.details["in_force"] == good
    assert refused.details["error_count"] == 1 and not refused.details["at_start"]
    assert refused.details["errors"][0].startswith(str(policy_dir / BAD_LINE))
    assert "max_duration" in refused.details["errors"][0]

    body = readyz(app)
    assert body["checks"]["policy"].startswith(f"ok ({good[:12]}; the files on disk are refused")
    assert body["policy"]["in_force"] == good and body["policy"]["source"] == "directory"
    assert body["policy"]["files_on_disk"] == "refused"
    assert body["policy"]["refused_version"] == bad and body["policy"]["refused_errors"] == 1
    assert metric(app, "broker_policy_files_refused") == 1
    assert metric(app, 'broker_policy_reloads_total{outcome="refused"}') == 1
    assert metric(app, f'broker_policy_info{{source="directory",version="{good}"}}') == 1
    (line,) = logs.messages(logging.ERROR)
    assert f"version {good} stays in force" in line and BAD_LINE in line

    write_policy(policy_dir, policy_text("app-read", "app-write"))  # fixed: back to the good one
    wait_seconds(lambda: readyz(app)["policy"]["files_on_disk"] == "in force", timeout=5)
    assert metric(app, "broker_policy_files_refused") == 0
    back = events(database, "policy.reload")[-1]
    assert back.details["version"] == back.details["previous"] == good


def test_a_worker_started_after_the_bad_write_serves_the_last_good_policy(
    database: Database, tmp_path: Path, logs: Records
) -> None:
    policy_dir = tmp_path / "policies"
    good = write_policy(policy_dir, policy_text("app-read", "app-write"))
    running = make_app(database, policy_dir)
    token = mint_token(database, policy_dir)
    assert served(running, token) == ["app-read", "app-write"]  # records the version
    bad = write_policy(policy_dir, BAD_POLICY)

    started = make_app(database, policy_dir)  # a restarted or new worker
    assert get_policy(started).version == good and get_policy(started).source == "database"
    (line,) = logs.messages(logging.ERROR)
    assert "serving the last good policy" in line and BAD_LINE in line
    assert served(started, token) == ["app-read", "app-write"]
    body = readyz(started)
    assert "the last good policy from the database" in body["checks"]["policy"]
    assert body["policy"]["source"] == "database" and body["policy"]["refused_version"] == bad
    (refused,) = events(database, "policy.reload_refused")
    assert refused.details["at_start"] and refused.details["source"] == "database"
    assert refused.details["in_force"] == good and refused.client == "web"

    fixed = write_policy(policy_dir, policy_text("app-read"))
    wait_seconds(lambda: served(started, token) == ["app-read"], timeout=5)
    assert get_policy(started).source == "directory" and get_policy(started).version == fixed


def test_bad_files_and_no_last_good_policy_stop_startup(database: Database, tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    write_policy(policy_dir, BAD_POLICY)
    with pytest.raises(ConfigError) as caught:
        make_app(database, policy_dir)
    message = caught.value.explain()
    assert str(policy_dir / BAD_LINE) in message
    assert "No last good policy to serve instead: none was ever recorded" in message


def test_a_stored_policy_that_no_longer_hashes_is_not_served(
    database: Database, tmp_path: Path
) -> None:
    policy_dir = tmp_path / "policies"
    write_policy(policy_dir, policy_text("app-read"))
    app = make_app(database, policy_dir)
    app.test_client().get("/healthz")  # the first check records the version
    with database.session() as session:
        session.execute(sa.text("UPDATE policy_versions SET files = '{}'"))
    write_policy(policy_dir, BAD_POLICY)
    with pytest.raises(ConfigError, match="do not match their hash"):
        make_app(database, policy_dir)


def test_reports_wait_for_the_database(tmp_path: Path, logs: Records) -> None:
    """A policy change never waits for the database; its reports are written once it is back."""
    database = Database(f"sqlite:///{tmp_path / 'later.db'}")  # not migrated yet
    policy_dir = tmp_path / "policies"
    good = write_policy(policy_dir, policy_text("app-read"))
    clock = Ticks()
    store = PolicyStore(policy_dir, database=database, interval=INTERVAL, monotonic=clock)
    bad = write_policy(policy_dir, BAD_POLICY)
    assert store.check(client="web") is False
    assert store.status.refused is not None and store.status.refused.version == bad
    assert store.current.version == good
    warnings = logs.messages(logging.WARNING)
    assert warnings and all("retried at a later check" in w for w in warnings)

    upgrade(database)
    clock.now += 2 * INTERVAL  # the retry waits a little after a failure
    store.check(client="web")
    assert recorded_versions(database) == {good}
    (refused,) = events(database, "policy.reload_refused")
    assert refused.details["refused_version"] == bad
    database.dispose()


def test_a_rewrite_of_the_same_size_and_time_changes_the_fingerprint(tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    write_policy(policy_dir, policy_text("app-read"))
    path = policy_dir / "policy.yaml"
    stat = path.stat()
    before = fingerprint(policy_dir)
    time.sleep(0.01)
    path.write_text(policy_text("app-rea1"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert fingerprint(policy_dir) != before
    assert fingerprint(policy_dir).racy  # just changed: the next check hashes the content


def test_a_missing_directory_is_refused_and_the_policy_stays(
    database: Database, tmp_path: Path
) -> None:
    policy_dir = tmp_path / "policies"
    good = write_policy(policy_dir, policy_text("app-read"))
    store = PolicyStore(policy_dir, database=database)
    (policy_dir / "policy.yaml").rename(tmp_path / "moved.yaml")
    policy_dir.rmdir()
    store.check(client="web")
    store.check(client="web")
    assert store.current.version == good
    assert store.status.refused is not None and store.status.refused.version is None
    (refused,) = events(database, "policy.reload_refused")
    assert "policy directory does not exist" in refused.details["errors"][0]
