"""What a process reports about its policy reloads: audit events and the version record.

Reports are queued and written when the database answers. During an outage they wait in the
process (at most MAX_PENDING_REPORTS) and retries back off, so the outage costs a request a
connect timeout now and then, not every interval; the policy change itself never waits.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from broker.audit import AuditLog, EventContext, NewEvent
from broker.db import Database
from broker.models import utcnow
from broker.policy import PolicyFiles
from broker.policy_versions import PolicyVersions

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 50
"""Errors quoted in an audit event or a log line; the count says how many there were."""
MAX_PENDING_REPORTS = 100
"""Reports kept while the database is down; the oldest are dropped (and logged) beyond this."""
MAX_RETRY_SECONDS = 300.0
"""Longest wait between attempts to write reports while the database fails."""


def process_name() -> str:
    """``host:pid`` of this process, as reports name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def reload_event(
    directory: Path, previous: str, files: PolicyFiles, warnings: int, now: datetime
) -> NewEvent:
    """``policy.reload``: the files validated and are in force (again, when unchanged)."""
    what = "the files on disk are in force again"
    if files.version != previous:
        what = f"version {files.version[:12]} in force (was {previous[:12]})"
    return NewEvent(
        "policy.reload",
        target=str(directory),
        decision="allow",
        reason=f"policy files validated: {what}",
        details={
            "version": files.version,
            "previous": previous,
            "files": [name for name, _ in files.contents],
            "warnings": warnings,
            "process": process_name(),
            "observed_at": now.isoformat(),
        },
    )


def refusal_event(
    directory: Path,
    refused_version: str | None,
    errors: Sequence[str],
    *,
    in_force: str,
    source: str,
    at_start: bool,
    now: datetime,
) -> NewEvent:
    """``policy.reload_refused``: the files do not validate; which version stays, and why."""
    kept = "the last good policy from the database" if at_start else "the policy in force"
    return NewEvent(
        "policy.reload_refused",
        target=str(directory),
        decision="deny",
        reason=f"policy files do not validate ({count(errors)}); {kept} ({in_force[:12]}) "
        "stays in force",
        details={
            "refused_version": refused_version,
            "in_force": in_force,
            "source": source,
            "at_start": at_start,
            "error_count": len(errors),
            "errors": list(errors[:MAX_REPORTED_ERRORS]),
            "process": process_name(),
            "observed_at": now.isoformat(),
        },
    )


class ReloadReports:
    """Queues reports and writes them to the database, retrying with backoff when it fails."""

    def __init__(
        self,
        database: Database | None,
        *,
        retry_base: float,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float],
    ) -> None:
        self.db = database
        self.versions = PolicyVersions(database, clock) if database is not None else None
        self.audit = AuditLog(clock)
        self.retry_base = retry_base
        self.monotonic = monotonic
        self._events: list[tuple[str | None, NewEvent, str]] = []  # client, event, version
        self._unrecorded: PolicyFiles | None = None
        self._failing: str | None = None  # the failure last logged
        self._failures = 0
        self._retry_at = 0.0

    def record(self, files: PolicyFiles) -> None:
        """Record these files as the version put in force (at the next write)."""
        self._unrecorded = files

    def add(self, event: NewEvent, *, policy_version: str, client: str | None) -> None:
        """Queue an audit event (``client`` None: the client of whoever writes it)."""
        self._events.append((client, event, policy_version))
        if len(self._events) > MAX_PENDING_REPORTS:
            dropped = self._events.pop(0)
            log.error("policy report dropped (database down too long): %s", dropped[1].reason)

    def write(self, client: str | None) -> None:
        """Write what is waiting; keep it for a later call if the database fails."""
        if self.db is None or self.versions is None:
            self._events.clear()
            return
        if (self._unrecorded is None and not self._events) or self.monotonic() < self._retry_at:
            return
        failures: list[str] = []
        if self._unrecorded is not None:
            try:
                self.versions.record(self._unrecorded, loaded_by=process_name())
                self._unrecorded = None
            except SQLAlchemyError as exc:
                failures.append(f"policy version not recorded: {first_line(exc)}")
        if self._events:
            try:
                with self.db.session() as session:
                    for event_client, event, version in self._events:
                        context = EventContext(
                            actor="system", client=event_client or client, policy_version=version
                        )
                        self.audit.append(session, context, event)
                self._events.clear()
            except SQLAlchemyError as exc:
                failures.append(f"policy audit events not written: {first_line(exc)}")
        self._backoff("; ".join(failures) or None)

    def _backoff(self, failing: str | None) -> None:
        if failing and failing != self._failing:  # once per distinct failure, not per request
            log.warning("%s (retried at a later check)", failing)
        self._failing = failing
        self._failures = self._failures + 1 if failing else 0
        if failing:
            delay = min(self.retry_base * 2 ** (self._failures - 1), MAX_RETRY_SECONDS)
            self._retry_at = self.monotonic() + delay


def listing(errors: Sequence[str]) -> str:
    """Errors one per line, the first MAX_REPORTED_ERRORS of them."""
    shown = "\n".join(errors[:MAX_REPORTED_ERRORS])
    more = len(errors) - MAX_REPORTED_ERRORS
    return shown + (f"\n... and {more} more" if more > 0 else "")


def count(errors: Sequence[object]) -> str:
    """``1 error``, ``3 errors``."""
    return f"{len(errors)} error" + ("" if len(errors) == 1 else "s")


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (driver errors carry the SQL after it)."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
