"""Fixtures for grant tests: a broker over moto roles, with issuance limits out of the way."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from apibed import Bed, create_bed_roles, write_policy
from schedbed import app_config

from broker import create_app
from broker.db import Database
from broker.models import utcnow


@pytest.fixture
def bed(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[Bed]:
    """A broker app over a migrated database, moto roles and a matching policy."""
    roles = create_bed_roles(moto_server)
    policy_dir = tmp_path / "policies"
    write_policy(policy_dir, roles, utcnow() + timedelta(minutes=40))
    config = app_config(database, moto_server, policy_dir, RATE_LIMIT_ISSUE_PER_MINUTE=1000)
    app = create_app(config)
    yield Bed(app, app.test_client(), moto_server, roles, policy_dir)
    app.extensions["broker.db"].dispose()
