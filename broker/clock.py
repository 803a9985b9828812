"""One source of "now": the database's clock, so a skewed host cannot end grants early.

Grants end at times the database holds, sessions expire at times AWS wrote into them, and
several web workers and schedulers on different hosts decide against both. Deciding with each
host's own clock lets a host running 15 minutes fast end grants early and drop denies while
the sessions they cover are still live. `DatabaseClock` answers with the PostgreSQL server's
time (sampled now and then, and kept in step with the host's monotonic clock between samples);
with SQLite the database lives on this host, so its clock is the host's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from broker.db import Database

log = logging.getLogger(__name__)


def host_now() -> datetime:
    """This host's idea of now (UTC)."""
    return datetime.now(UTC)


class DatabaseClock:
    """A callable returning the database's current time (UTC, timezone-aware)."""

    def __init__(
        self,
        database: Database,
        *,
        resample_seconds: float = 30.0,
        warn_skew_seconds: float = 2.0,
        host: Callable[[], datetime] = host_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database = database
        self.resample_seconds = resample_seconds
        self.warn_skew_seconds = warn_skew_seconds
        self._host = host
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._offset = timedelta(0)
        self._sampled_at: float | None = None

    def __call__(self) -> datetime:
        """Now, by the database's clock."""
        due = self._sampled_at is None or (
            self._monotonic() - self._sampled_at >= self.resample_seconds
        )
        if due and self.database.dialect == "postgresql":
            self.sample()
        return self._host() + self._offset

    @property
    def skew_seconds(self) -> float:
        """How far this host's clock is behind (+) or ahead (-) of the database's."""
        return self._offset.total_seconds()

    def to_host(self, moment: datetime) -> datetime:
        """The host time at which the database's clock will read `moment` (for timers)."""
        return moment - self._offset

    def sample(self) -> None:
        """Measure the offset between the database's clock and this host's."""
        try:
            before = self._host()
            with self.database.engine.connect() as conn:
                server = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
            after = self._host()
        except Exception as exc:  # noqa: BLE001 - keep the last offset; the work will fail anyway
            log.warning("could not read the database clock (%s); using the last offset", exc)
            with self._lock:
                self._sampled_at = self._monotonic()
            return
        if server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        offset = server - (before + (after - before) / 2)
        with self._lock:
            self._offset = offset
            self._sampled_at = self._monotonic()
        if abs(offset.total_seconds()) > self.warn_skew_seconds:
            log.warning(
                "this host's clock differs from the database's by %.1f s; deciding by the "
                "database's clock (check NTP on this host)",
                -offset.total_seconds(),
            )
