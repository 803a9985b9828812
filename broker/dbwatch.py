"""Deadlines for a PostgreSQL server that hangs instead of failing.

`statement_timeout` and `lock_timeout` are enforced by the server; a server that is frozen (or a
network path that swallows packets) enforces nothing, and libpq would wait forever. Here every
statement and every checkout ping gets a client-side deadline: when it passes, a watchdog thread
shuts the connection's socket down, the driver raises OperationalError at once, the pool drops
that connection, and the request answers 503 instead of hanging until gunicorn kills the worker.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from sqlalchemy import Engine, event, exc

log = logging.getLogger(__name__)
_TICK = 0.1


class Watchdog:
    """Shuts down the socket of any connection still busy past its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[int, tuple[float, int]] = {}
        self._thread: threading.Thread | None = None

    def arm(self, dbapi_conn: Any, seconds: float) -> None:
        """Start a deadline for the statement this connection is about to run."""
        try:
            fd = int(dbapi_conn.fileno())
        except Exception:  # noqa: BLE001 - a closed connection: nothing to watch
            return
        with self._lock:
            self._deadlines[id(dbapi_conn)] = (time.monotonic() + seconds, fd)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="broker-db-watchdog", daemon=True
                )
                self._thread.start()

    def disarm(self, dbapi_conn: Any) -> None:
        """The statement finished (or failed) in time."""
        with self._lock:
            self._deadlines.pop(id(dbapi_conn), None)

    def _run(self) -> None:
        while True:
            time.sleep(_TICK)
            now = time.monotonic()
            with self._lock:
                expired = [k for k, (deadline, _) in self._deadlines.items() if deadline <= now]
                fds = [self._deadlines.pop(k)[1] for k in expired]
            for fd in fds:
                log.warning("database did not answer in time; dropping the connection")
                try:
                    with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed


def watch(engine: Engine, *, statement_seconds: float, ping_seconds: float) -> None:
    """Give every statement and every checkout of `engine` a client-side deadline.

    The deadline for statements is the server's statement_timeout plus a little (so the server's
    own, clearer error normally wins); checkouts ping the server first (the pessimistic
    disconnect check) under `ping_seconds`, replacing `pool_pre_ping`.
    """
    dog = Watchdog()
    grace = statement_seconds + 2.0

    @event.listens_for(engine, "before_cursor_execute")
    def _arm(conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any) -> None:
        dog.arm(conn.connection.dbapi_connection, grace)

    @event.listens_for(engine, "after_cursor_execute")
    def _disarm(
        conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: Any
    ) -> None:
        dog.disarm(conn.connection.dbapi_connection)

    @event.listens_for(engine, "handle_error")
    def _disarm_on_error(context: Any) -> None:
        connection = context.connection
        if connection is not None and connection.connection.dbapi_connection is not None:
            dog.disarm(connection.connection.dbapi_connection)

    @event.listens_for(engine.pool, "checkout")
    def _ping(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        dog.arm(dbapi_conn, ping_seconds)
        try:
            with dbapi_conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            if dbapi_conn.info.transaction_status != 0:  # the ping opened a transaction
                dbapi_conn.rollback()
        except Exception as error:
            # A dead or hung connection: the pool discards it and tries a fresh one.
            raise exc.DisconnectionError(f"connection failed its ping: {error}") from error
        finally:
            dog.disarm(dbapi_conn)
