"""Shared fixtures: a real database per test (SQLite file and PostgreSQL), app, client."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from broker import create_app
from broker.db import Database
from broker.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
# In CI a skipped test is a failure, at run time and at collection time (tests/helpers/ci_skips.py).
pytest_plugins = ["ci_skips"]

PG_URL = os.environ.get("BROKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def pytest_configure(config: pytest.Config) -> None:
    """Give the run an empty instance folder of its own: settings a developer keeps in theirs
    (`broker dev` writes instance/broker.toml) must never leak into the tests."""
    os.environ["BROKER_INSTANCE_PATH"] = tempfile.mkdtemp(prefix="broker-test-instance-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.pop("BROKER_INSTANCE_PATH", ""), ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a private schema in PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'broker.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """A migrated Database on the parametrized backend."""
    db = Database(db_url)
    upgrade(db)
    yield db
    db.dispose()


def make_config(db_url: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Test configuration pointing at a migrated database and the example policies."""
    config: dict[str, Any] = {
        "ENV": "testing",
        "TESTING": True,
        "DATABASE_URL": db_url,
        "POLICY_DIR": str(POLICIES),
        "LOG_JSON": True,
    }
    config.update(overrides)
    return config


@pytest.fixture
def app(database: Database, tmp_path: Path) -> Iterator[Flask]:
    """The broker app on a migrated database."""
    application = create_app(make_config(database.url, tmp_path))
    yield application
    application.extensions["broker.db"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for `app`."""
    return app.test_client()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Any]:
    """One moto server (STS + IAM over HTTP on loopback) for the whole run."""
    from aws import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture(autouse=True, scope="session")
def _aws_test_credentials() -> Iterator[None]:
    """Dummy AWS credentials for clients pointed at moto; never real ones."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ.pop("AWS_PROFILE", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright, one per run (Playwright's sync API allows one)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
