"""Deadlines for a PostgreSQL server that hangs instead of failing, without a ping per checkout.

`statement_timeout` and `lock_timeout` are enforced by the server; a server that is frozen (or a
network path that swallows packets) enforces nothing, and libpq would wait forever. So:

- every statement gets a client-side deadline (the server's statement timeout plus a little);
  when it passes, a watchdog thread shuts the connection's socket down, the driver raises
  OperationalError at once, the pool drops that connection, and the request answers 503;
- a statement still running after ``probe_seconds`` makes the watchdog ask whether the server
  answers at all: it opens a fresh connection under that same timeout. A busy server answers
  and its long statements run on; a frozen one does not, and every statement waiting that long
  is cut at once (503 within seconds, not after the statement timeout);
- a connection taken from the pool is checked without a round trip: a server that restarted or
  closed it has left something to read (its goodbye, or the end of the stream) on an idle
  socket, so such a connection is replaced before use. Together with ``pool_recycle`` this
  replaces the ``SELECT 1`` that every checkout used to pay.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event, exc

log = logging.getLogger(__name__)
_TICK = 0.1


@dataclass
class _Armed:
    deadline: float
    probe_at: float
    fd: int


class Watchdog:
    """Shuts down the socket of any connection still busy past its deadline, or past its probe
    point when the server no longer answers."""

    def __init__(self, probe: Callable[[], bool] | None = None, probe_seconds: float = 5.0) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, _Armed] = {}
        self._thread: threading.Thread | None = None
        self._probe = probe
        self._probe_seconds = probe_seconds
        self._next_probe = 0.0

    def arm(self, dbapi_conn: Any, seconds: float) -> None:
        """Start a deadline for the statement this connection is about to run."""
        try:
            fd = int(dbapi_conn.fileno())
        except Exception:  # noqa: BLE001 - a closed connection: nothing to watch
            return
        now = time.monotonic()
        with self._lock:
            self._armed[id(dbapi_conn)] = _Armed(now + seconds, now + self._probe_seconds, fd)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="broker-db-watchdog", daemon=True
                )
                self._thread.start()

    def disarm(self, dbapi_conn: Any) -> None:
        """The statement finished (or failed) in time."""
        with self._lock:
            self._armed.pop(id(dbapi_conn), None)

    def _run(self) -> None:
        while True:
            time.sleep(_TICK)
            now = time.monotonic()
            with self._lock:
                expired = [k for k, a in self._armed.items() if a.deadline <= now]
                fds = [self._armed.pop(k).fd for k in expired]
                suspects = [k for k, a in self._armed.items() if a.probe_at <= now]
            self._shut(fds)
            if suspects and self._probe is not None and now >= self._next_probe:
                answered = self._probe()
                self._next_probe = time.monotonic() + self._probe_seconds
                if not answered:
                    with self._lock:
                        fds = [self._armed.pop(k).fd for k in suspects if k in self._armed]
                    self._shut(fds)

    @staticmethod
    def _shut(fds: list[int]) -> None:
        for fd in fds:
            log.warning("database did not answer in time; dropping the connection")
            try:
                with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


def idle_connection_dead(dbapi_conn: Any) -> bool:
    """True when an idle connection has something to read: the server closed or ended it."""
    try:
        if getattr(dbapi_conn, "closed", False):
            return True
        readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
    except (OSError, ValueError, TypeError):
        return True
    return bool(readable)


def server_answers(engine: Engine, seconds: float) -> bool:
    """Whether the server completes a fresh connection within ``seconds`` (or refuses it at
    once: a refusal is an answer, and statements on a stopped server fail by themselves)."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    cparams = {**cparams, "connect_timeout": max(int(seconds), 1)}
    started = time.monotonic()
    try:
        conn = engine.dialect.loaded_dbapi.connect(*cargs, **cparams)
    except Exception:  # noqa: BLE001 - a timeout or a refusal, told apart by the time taken
        return time.monotonic() - started < seconds * 0.8
    with contextlib.suppress(Exception):  # closing a probe connection cannot matter
        conn.close()
    return True


def watch(engine: Engine, *, statement_seconds: float, ping_seconds: float) -> None:
    """Give every statement of `engine` a client-side deadline and a liveness probe after
    `ping_seconds`; check pooled connections for a closed socket at checkout (no round trip)."""
    dog = Watchdog(lambda: server_answers(engine, ping_seconds), ping_seconds)
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
    def _check(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        if idle_connection_dead(dbapi_conn):
            # The pool discards it and tries a fresh one.
            raise exc.DisconnectionError("the server closed this pooled connection")
