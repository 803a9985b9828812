"""Engine and session handling for SQLite (default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from broker.canonical import canonical_json
from broker.dbwatch import watch

EXTENSION = "broker.db"


@dataclass(frozen=True)
class Timeouts:
    """How long the broker waits on its database before answering "unavailable" (503).

    PostgreSQL: connecting, any one statement, waiting for a row lock. SQLite: waiting for the
    write lock (busy timeout).
    """

    connect_seconds: int = 5
    statement_seconds: int = 30
    lock_seconds: int = 10


class Database:
    """One engine and session factory per application (or per scheduler process)."""

    def __init__(self, url: str, *, echo: bool = False, timeouts: Timeouts | None = None) -> None:
        self.url = url
        self.engine = make_engine(url, echo=echo, timeouts=timeouts or Timeouts())
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(
            self.engine.execution_options(broker_read_only=True), expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reading only: on SQLite it does not take the write lock."""
        with self._readers() as session, session.begin():
            yield session

    @contextmanager
    def snapshot_session(self) -> Iterator[Session]:
        """A read-only transaction whose every query sees one snapshot of the database.

        PostgreSQL: REPEATABLE READ READ ONLY (READ COMMITTED would give each statement its own
        snapshot, so a scan and a later look at the chain head could disagree). SQLite: a
        deferred transaction in WAL mode, which reads one snapshot and never blocks writers.
        """
        engine = self.engine.execution_options(broker_read_only=True)
        if self.dialect == "postgresql":
            engine = engine.execution_options(isolation_level="REPEATABLE READ")
        with Session(engine, expire_on_commit=False) as session, session.begin():
            if self.dialect == "postgresql":
                session.execute(text("SET TRANSACTION READ ONLY"))
            yield session

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def make_engine(url: str, *, echo: bool = False, timeouts: Timeouts | None = None) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and foreign keys; PostgreSQL gets
    connect, statement and lock timeouts."""
    limits = timeouts or Timeouts()
    if url.startswith("sqlite"):
        engine = create_engine(
            url, echo=echo, connect_args={"timeout": 30}, json_serializer=canonical_json
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "BEGIN" be ours: we issue BEGIN IMMEDIATE where we must serialize.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={limits.lock_seconds * 1000:d}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers serialize up front (no lock upgrades, no SQLITE_BUSY mid-transaction);
            # readers get a plain snapshot.
            read_only = conn.get_execution_options().get("broker_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    engine = create_engine(
        url,
        echo=echo,
        pool_size=10,
        max_overflow=20,
        pool_timeout=limits.connect_seconds,
        # No ping per checkout (see broker.dbwatch): connections are renewed every half hour,
        # and one the server closed is noticed at checkout without a round trip.
        pool_recycle=1800,
        json_serializer=canonical_json,
        connect_args={"connect_timeout": limits.connect_seconds},
    )

    @event.listens_for(engine, "connect")
    def _pg_timeouts(dbapi_conn: Any, _record: Any) -> None:
        # A statement or a lock wait that outlives these fails fast, and the request gets a 503.
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {limits.statement_seconds * 1000:d}")
            cur.execute(f"SET lock_timeout = {limits.lock_seconds * 1000:d}")
        dbapi_conn.commit()

    # Client-side deadlines (a frozen server enforces nothing) and the checkout check.
    watch(engine, statement_seconds=limits.statement_seconds, ping_seconds=limits.connect_seconds)
    return engine


def init_app(app: Flask) -> None:
    """Attach a Database to the app and close the request's session at teardown."""
    cfg = app.config
    app.extensions[EXTENSION] = Database(
        cfg["DATABASE_URL"],
        timeouts=Timeouts(
            connect_seconds=int(cfg["DB_CONNECT_TIMEOUT_SECONDS"]),
            statement_seconds=int(cfg["DB_STATEMENT_TIMEOUT_SECONDS"]),
            lock_seconds=int(cfg["DB_LOCK_TIMEOUT_SECONDS"]),
        ),
    )
    app.teardown_appcontext(_close_session)


def get_database(app: Flask | None = None) -> Database:
    """The app's Database."""
    db: Database = (app or current_app).extensions[EXTENSION]
    return db


def get_session() -> Session:
    """The session bound to the current request (created on first use)."""
    if "db_session" not in g:
        g.db_session = get_database().sessions()
    session: Session = g.db_session
    return session


def _close_session(_exc: BaseException | None) -> None:
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.close()
