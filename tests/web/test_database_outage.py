"""A database that goes away: 503 with a clear message and one log line, and back again after.

These tests stop their own throwaway PostgreSQL cluster (never the shared one) and fill a
SQLite file's disk budget; the broker must answer 503 JSON `{code, message}` fast, log one line
without a traceback, and serve normally once the database is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apibed import Bed, bed_setup
from pgcluster import PgCluster, available

from broker import create_app
from broker.db import Database
from broker.migrate import upgrade

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not available(), reason="PostgreSQL server binaries are not installed"),
]
DEV = ("developers",)


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    with PgCluster() as running:
        yield running


@pytest.fixture
def bed_on_cluster(cluster: PgCluster, moto_server: Any, tmp_path: Path) -> Iterator[Bed]:
    database = Database(cluster.url)
    upgrade(database)
    database.dispose()
    roles, policy_dir, config = bed_setup(cluster.url, moto_server, tmp_path)
    app = create_app({**config, "DB_CONNECT_TIMEOUT_SECONDS": 2})
    yield Bed(app, app.test_client(), moto_server, roles, policy_dir)
    app.extensions["broker.db"].dispose()


def test_stopped_database_answers_503_fast_with_one_log_line(
    bed_on_cluster: Bed, cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    bed = bed_on_cluster
    token = bed.token("dev@example.com", DEV)
    assert bed.call("GET", "/me", token).status_code == 200
    cluster.stop()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for path in ("/me", "/entitlements", "/grants"):
            started = time.monotonic()
            response = bed.call("GET", path, token)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, (path, response.get_data(as_text=True))
            assert response.json["code"] == "database_unavailable"
            assert "database" in response.json["message"]
            assert response.headers["Retry-After"] == "5"
            assert elapsed < 5, (path, elapsed)
        issued = bed.call("POST", "/credentials", token, json={"entitlement": "app-read"})
        assert issued.status_code == 503, issued.get_data(as_text=True)
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert records, "the outage was not logged"
    assert all(r.exc_info is None and "Traceback" not in r.getMessage() for r in records)
    assert len(records) <= 2 * 4  # at most a line or two per request, never a traceback
    cluster.start()
    assert bed.call("GET", "/me", token).status_code == 200  # back without a restart


def test_hung_database_answers_503_within_the_timeout(
    bed_on_cluster: Bed, cluster: PgCluster
) -> None:
    bed = bed_on_cluster
    token = bed.token("dev@example.com", DEV)
    assert bed.call("GET", "/me", token).status_code == 200  # a pooled connection exists
    cluster.freeze()  # SIGSTOP: the kernel still accepts TCP, the server never answers
    try:
        for _ in range(2):
            started = time.monotonic()
            response = bed.call("GET", "/me", token)
            elapsed = time.monotonic() - started
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.json["code"] == "database_unavailable"
            assert elapsed < 8, elapsed  # ping deadline (2 s) + connect timeout (2 s) + slack
    finally:
        cluster.thaw()
    assert bed.call("GET", "/me", token).status_code == 200
