"""/readyz names the part that is down: database, policy, identity provider; AWS is reported."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apibed import bed_setup
from oidc_provider import OidcProvider, node_modules_present

from broker import create_app
from broker.db import Database


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


@pytest.fixture
def config(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    _roles, _policy_dir, base = bed_setup(database.url, moto_server, tmp_path)
    yield base


def _ready(config: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    app = create_app(config)
    try:
        started = time.monotonic()
        response = app.test_client().get("/readyz")
        return response.status_code, response.json, time.monotonic() - started
    finally:
        app.extensions["broker.db"].dispose()


def test_identity_provider_down_makes_the_worker_unready_and_says_so(
    config: dict[str, Any],
) -> None:
    issuer = f"http://127.0.0.1:{_closed_port()}"
    status, body, elapsed = _ready({**config, "OIDC_ISSUER": issuer, "OIDC_CLIENT_ID": "broker"})
    assert status == 503, body
    assert body["checks"]["identity_provider"].startswith("unreachable")
    assert body["checks"]["database"] == "ok"  # (AWS is advisory and may be slow on a busy host)
    assert elapsed < 6


@pytest.mark.skipif(not node_modules_present(), reason="run `npm ci` in tests/node")
def test_identity_provider_up_is_ready(config: dict[str, Any]) -> None:
    with OidcProvider() as idp:
        status, body, _ = _ready({**config, "OIDC_ISSUER": idp.issuer, "OIDC_CLIENT_ID": "broker"})
    assert status == 200, body
    assert body["checks"]["identity_provider"] == "ok"


def test_aws_unreachable_is_reported_but_does_not_unready(config: dict[str, Any]) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    status, body, elapsed = _ready({**config, "AWS_ENDPOINT_URL": endpoint})
    assert status == 200, body
    assert body["checks"]["aws"].startswith(("unreachable", "no answer"))
    assert elapsed < 6
