"""What operators read: structured log fields, HTTP metrics per route, a guarded /metrics."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apibed import Bed, bed_setup

from broker import create_app
from broker.db import Database
from broker.logs import JsonFormatter

DEV = ("developers",)


def _sample(text: str, prefix: str) -> float:
    """The value of the /metrics sample line that starts with `prefix`."""
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{prefix} not in /metrics")


def test_issuance_log_line_carries_its_fields_as_keys(
    bed: Bed, caplog: pytest.LogCaptureFixture
) -> None:
    token = bed.token("dev@example.com", DEV)
    with caplog.at_level(logging.INFO, logger="broker.sts.issuer"):
        issued = bed.call("POST", "/credentials", token, json={"entitlement": "app-read"})
    assert issued.status_code == 201, issued.json
    [record] = [r for r in caplog.records if r.name == "broker.sts.issuer"]
    line = json.loads(JsonFormatter().format(record))
    body = issued.json
    assert line["event"] == "sts.assume_role"
    assert line["role"] == bed.roles["read"]
    assert line["session"] == body["role_session_name"]
    assert line["person"] == body["source_identity"]
    assert line["grant"] == body["grant_id"]
    assert line["access_key_id"] == body["credentials"]["AccessKeyId"]
    assert body["credentials"]["SecretAccessKey"] not in json.dumps(line)
    assert body["credentials"]["SessionToken"] not in json.dumps(line)


def test_http_metrics_count_routes_statuses_and_429s(bed: Bed) -> None:
    token = bed.token("dev@example.com", DEV)
    for _ in range(3):
        assert bed.call("GET", "/me", token).status_code == 200
    assert bed.call("POST", "/grants/nope/explode", token, json={}).status_code == 404
    bed.client.get("/no/such/page")
    throttled = 0
    for _ in range(25):  # RATE_LIMIT_ISSUE_PER_MINUTE defaults to 20
        status = bed.call("POST", "/credentials", token, json={"entitlement": "app-read"})
        throttled += status.status_code == 429
    assert throttled
    text = bed.client.get("/metrics").get_data(as_text=True)
    assert (
        _sample(text, 'broker_http_requests_total{method="GET",route="/api/v1/me",status="200"}')
        == 3
    )
    assert (
        _sample(
            text,
            'broker_http_requests_total{method="POST",route="/api/v1/credentials",status="429"}',
        )
        == throttled
    )
    assert (
        _sample(text, 'broker_http_requests_total{method="GET",route="unmatched",status="404"}')
        == 1
    )
    assert "/no/such/page" not in text  # raw paths never become labels
    assert (
        _sample(text, 'broker_http_request_duration_seconds_count{method="GET",route="/api/v1/me"}')
        == 3
    )


@pytest.fixture
def guarded(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[Any]:
    _roles, _policy_dir, config = bed_setup(database.url, moto_server, tmp_path)
    app = create_app({**config, "METRICS_TOKEN": "scrape-me-" + "x" * 20})
    yield app
    app.extensions["broker.db"].dispose()


def test_metrics_can_require_a_bearer_token(guarded: Any) -> None:
    client = guarded.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me-" + "x" * 20})
    assert ok.status_code == 200 and "broker_grants" in ok.get_data(as_text=True)
