"""Waking the scheduler when revocation work is queued, instead of waiting for its next sweep.

A transaction that queues a revocation (a revoke or cut-off from the web or the API, a lost
session's deny armed) calls :func:`notify`. On PostgreSQL that is ``NOTIFY broker_revocations``,
delivered when (and only if) the transaction commits, to every scheduler listening with a
:class:`Listener`. SQLite has no notifications: the listener polls the queue's index instead,
a few times a second (one indexed read that finds nothing, most of the time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from broker.db import Database
from broker.models import Revocation, RevocationStatus

log = logging.getLogger(__name__)

REVOCATIONS = "broker_revocations"
_NOTIFIED = "broker.wakeup.notified"


def notify(session: Session, channel: str = REVOCATIONS) -> None:
    """Wake the schedulers as soon as this session's transaction commits (PostgreSQL; on
    SQLite they poll). Once per transaction."""
    if session.get_bind().dialect.name != "postgresql":
        return
    transaction = session.get_transaction()
    if session.info.get(_NOTIFIED) is transaction and transaction is not None:
        return
    session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})
    session.info[_NOTIFIED] = transaction


class Listener:
    """Calls ``wake()`` (on its own thread) when revocation work may be waiting."""

    def __init__(
        self,
        database: Database,
        wake: Callable[[], None],
        *,
        clock: Callable[[], datetime],
        poll_seconds: float = 0.25,
    ) -> None:
        self.db = database
        self.wake = wake
        self.clock = clock
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start listening (PostgreSQL) or polling (SQLite)."""
        if self._thread is not None:
            return
        self._stop.clear()
        run = self._listen if self.db.dialect == "postgresql" else self._poll
        self._thread = threading.Thread(target=run, name="broker-wakeup", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread (at most a second or so)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)

    def _wake(self) -> None:
        try:
            self.wake()
        except Exception:  # noqa: BLE001 - the next wake-up or sweep tries again
            log.exception("revocation pass after a wake-up failed")

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                due = self._due()
            except Exception as exc:  # noqa: BLE001 - a database hiccup: poll again
                log.warning("could not look at the revocation queue: %s", exc)
                continue
            if due:
                self._wake()

    def _due(self) -> bool:
        now = self.clock()
        with self.db.read_session() as session:
            found = session.scalar(
                select(Revocation.id)
                .where(
                    Revocation.status == RevocationStatus.PENDING,
                    or_(Revocation.next_attempt_at.is_(None), Revocation.next_attempt_at <= now),
                )
                .limit(1)
            )
        return found is not None

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as exc:  # noqa: BLE001 - down: the sweeps still run; retry
                log.warning("cannot listen for revocation wake-ups: %s", exc)
                self._stop.wait(5.0)
                continue
            try:
                self._wake()  # whatever was queued while nobody listened
                while not self._stop.is_set():
                    if any(True for _ in conn.notifies(timeout=1.0, stop_after=1)):
                        self._wake()
            except Exception as exc:  # noqa: BLE001 - connection lost: reconnect
                log.warning("lost the revocation wake-up connection: %s", exc)
                self._stop.wait(1.0)
            finally:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - already gone
                    log.debug("wake-up connection already closed")

    def _connect(self) -> Any:
        engine = self.db.engine
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        conn = engine.dialect.loaded_dbapi.connect(*cargs, **cparams, autocommit=True)
        conn.execute(f'LISTEN "{REVOCATIONS}"')
        return conn
