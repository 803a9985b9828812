"""Fixtures for page tests: the broker over moto roles, signing in through a stub issuer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from uibed import Ui, make_ui
from webstubs import StubIssuer

from broker.db import Database


@pytest.fixture(scope="session")
def stub_issuer() -> Iterator[StubIssuer]:
    """One stub OpenID issuer (and federation endpoint) for the run."""
    issuer = StubIssuer().start()
    yield issuer
    issuer.stop()


@pytest.fixture
def ui(
    database: Database, moto_server: Any, stub_issuer: StubIssuer, tmp_path: Path
) -> Iterator[Ui]:
    """The broker app for page tests (SQLite and PostgreSQL)."""
    built = make_ui(database, moto_server, stub_issuer, tmp_path)
    yield built
    built.app.extensions["broker.db"].dispose()
