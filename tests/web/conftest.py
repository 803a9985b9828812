"""Fixtures for API tests: a broker over moto roles and a policy written for them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from apibed import ADMIN_POLICY, READ_POLICY, Bed, write_policy
from aws import create_role

from broker import create_app
from broker.db import Database
from broker.models import utcnow


@pytest.fixture
def bed(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[Bed]:
    """A broker app over a migrated database, moto roles and a matching policy."""
    suffix = uuid.uuid4().hex[:8]
    iam = moto_server.client("iam")
    roles = {
        "read": create_role(
            iam, f"read-{suffix}", max_session_seconds=3600, policies={"read": READ_POLICY}
        ),
        "admin": create_role(
            iam, f"admin-{suffix}", max_session_seconds=7200, policies={"admin": ADMIN_POLICY}
        ),
    }
    policy_dir = tmp_path / "policies"
    write_policy(policy_dir, roles, utcnow() + timedelta(minutes=40))
    app = create_app(
        {
            "ENV": "testing",
            "TESTING": True,
            "DATABASE_URL": database.url,
            "POLICY_DIR": str(policy_dir),
            "AWS_ENDPOINT_URL": moto_server.endpoint_url,
            "AWS_REGION": "us-east-1",
        }
    )
    yield Bed(app, app.test_client(), moto_server, roles, policy_dir)
    app.extensions["broker.db"].dispose()
