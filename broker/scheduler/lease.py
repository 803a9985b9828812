"""The scheduler lease: one scheduler per SQLite database, a heartbeat row per process.

SQLite has no advisory locks and a single writer, so only one scheduler may run against it: the
first takes the ``scheduler`` lease row and renews it; a second one refuses to start while the
lease is fresh. A lease whose heartbeat is older than ``stale_after``, or whose holder is a
process on this host that no longer exists, is taken over (a killed scheduler does not block
its replacement for long). On PostgreSQL any number of schedulers run; each keeps a row
``node:<holder>`` only so operators (and ``/metrics``) can see who is alive.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, update

from broker.db import Database
from broker.errors import Conflict
from broker.models import SchedulerLease

SINGLETON = "scheduler"


class SchedulerAlreadyRunning(Conflict):
    """Another scheduler holds the SQLite lease."""

    code = "scheduler_running"


def holder_id() -> str:
    """``host:pid:random``, unique per scheduler instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """Takes, renews and releases this process's lease row."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Callable[[], datetime],
        stale_after: timedelta = timedelta(seconds=30),
        holder: str | None = None,
    ) -> None:
        self.db = database
        self.clock = clock
        self.stale_after = stale_after
        self.holder = holder or holder_id()
        self.name = SINGLETON if database.dialect == "sqlite" else f"node:{self.holder}"[:64]

    def acquire(self) -> None:
        """Take the lease, or raise SchedulerAlreadyRunning saying who holds it."""
        now = self.clock()
        with self.db.session() as session:
            row = session.get(SchedulerLease, self.name)
            if row is None:
                session.add(SchedulerLease(name=self.name, holder=self.holder, heartbeat_at=now))
                return
            age = now - row.heartbeat_at
            if row.holder != self.holder and age < self.stale_after and _alive(row.holder):
                raise SchedulerAlreadyRunning(
                    f"Another scheduler ({row.holder}) is running against this SQLite database "
                    f"(last heartbeat {int(age.total_seconds())} s ago). SQLite has a single "
                    "writer, so only one scheduler may run.",
                    hint="Stop the other scheduler first (`broker dev` runs one in-process), "
                    f"wait {int(self.stale_after.total_seconds())} s if it was killed, or use "
                    "PostgreSQL to run several schedulers.",
                )
            row.holder = self.holder
            row.heartbeat_at = now

    @property
    def forget_after(self) -> timedelta:
        """How long a silent scheduler's row stays (and shows in /metrics) before it is pruned."""
        return max(self.stale_after * 20, timedelta(minutes=10))

    def renew(self) -> bool:
        """Refresh the heartbeat; False when the lease was taken over (stop scheduling).

        Rows of schedulers silent for longer than `forget_after` (killed, host gone) are pruned,
        so the heartbeat metric shows a dead scheduler for a while, then forgets it.
        """
        now = self.clock()
        with self.db.session() as session:
            done = session.execute(
                update(SchedulerLease)
                .where(SchedulerLease.name == self.name, SchedulerLease.holder == self.holder)
                .values(heartbeat_at=now)
            )
            session.execute(
                delete(SchedulerLease).where(
                    SchedulerLease.name.like("node:%"),
                    SchedulerLease.heartbeat_at < now - self.forget_after,
                )
            )
            return bool(getattr(done, "rowcount", 0))

    def release(self) -> None:
        """Give the lease up (on a clean stop)."""
        with self.db.session() as session:
            session.execute(
                delete(SchedulerLease).where(
                    SchedulerLease.name == self.name, SchedulerLease.holder == self.holder
                )
            )


def _alive(holder: str) -> bool:
    """False only when the holder ran on this host and its process is gone."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
