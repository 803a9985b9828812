"""Fixtures for activity tests (helpers live in tests/helpers/activitybed.py, trailbed.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from activitybed import ActivityBed, make_bed

from broker.db import Database


@pytest.fixture
def bed(database: Database, moto_server: Any, tmp_path: Path) -> Iterator[ActivityBed]:
    """An activity bed (see make_bed)."""
    found = make_bed(database, moto_server, tmp_path)
    yield found
    found.app.extensions["broker.db"].dispose()
