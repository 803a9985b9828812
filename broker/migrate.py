"""Schema migrations (Alembic) and the `broker db` commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.engine import make_url

from broker.db import Database, get_database
from broker.errors import BrokerError, ServiceUnavailable

F = TypeVar("F", bound=Callable[..., Any])

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


class DatabaseNotReady(ServiceUnavailable):
    """The configured database does not exist, or has no broker tables (never migrated)."""

    code = "database_not_ready"


_WHERE = (
    "Run `broker db upgrade` to create or migrate it, or point the command at the broker's "
    "database: BROKER_DATABASE_URL, or the instance folder's broker.toml "
    "(BROKER_INSTANCE_PATH); `broker dev` writes its settings there."
)


def require_migrated(database: Database) -> None:
    """Raise DatabaseNotReady, naming the database, when it is missing or was never migrated.

    A missing SQLite file is reported without being created (connecting would create it).
    """
    url = make_url(database.url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        if not Path(url.database).exists():
            raise DatabaseNotReady(f"There is no broker database at {url.database}.", hint=_WHERE)
    if current_revision(database) is None:
        raise DatabaseNotReady(
            f"The database {shown} has no broker tables (it was never migrated).", hint=_WHERE
        )


def needs_migrated_database(command_function: F) -> F:
    """For an admin command in an app context: stop with a clear message, not a traceback,
    when the configured database is missing or was never migrated."""

    @functools.wraps(command_function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            require_migrated(get_database(current_app))
        except BrokerError as exc:
            raise click.ClickException(exc.explain()) from None
        return command_function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
