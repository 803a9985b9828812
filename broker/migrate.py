"""Schema migrations (Alembic) and the `broker db` commands."""

from __future__ import annotations

from pathlib import Path

import click
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from flask import current_app
from flask.cli import with_appcontext

from broker.db import Database, get_database

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database: Database) -> Config:
    """An Alembic config pointing at the broker's migrations and this database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return cfg


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema up to `revision`."""
    cfg = alembic_config(database)
    with database.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(database: Database) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    with database.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@click.group("db")
def db_cli() -> None:
    """Manage the broker database."""


@db_cli.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_appcontext
def upgrade_command(revision: str) -> None:
    """Apply schema migrations."""
    database = get_database(current_app)
    upgrade(database, revision)
    click.echo(f"database at revision {current_revision(database)} ({database.dialect})")
