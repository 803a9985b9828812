"""Fixtures for API tests: a broker over moto roles and a policy written for them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apibed import Bed, bed_setup

from broker import create_app
from broker.db import Database


@pytest.fixture
def bed(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[Bed]:
    """A broker app over a migrated database, moto roles and a matching policy."""
    roles, policy_dir, config = bed_setup(database.url, moto_server, tmp_path)
    app = create_app(config)
    yield Bed(app, app.test_client(), moto_server, roles, policy_dir)
    app.extensions["broker.db"].dispose()
