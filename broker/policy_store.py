"""The policy in force in this process: loaded fail-closed, watched, the last good one kept.

Each process (every web worker, the scheduler, a CLI command) holds one PolicyStore:

- At start it loads the policy directory. When the files do not validate it serves the last good
  policy kept in the database (:mod:`broker.policy_versions`), loudly; with none there, startup
  stops with every error at its file and line (fail closed).
- ``check()`` looks at the directory again: a fingerprint of names, sizes, times and inodes
  first (a few ``stat`` calls), the content hash only when that changed, and a full validation
  only for a version not seen before. A valid new version is put in force at once (one atomic
  swap) and recorded in the database; an invalid one is refused and the policy in force stays.
  Either is reported: an audit event (``policy.reload`` allow, ``policy.reload_refused`` deny
  with the errors), a log line, and :attr:`PolicyStore.status` for ``/readyz`` and ``/metrics``.
- Web workers call ``check_if_due()`` at the start of a request, at most once every
  ``POLICY_RELOAD_SECONDS`` and never making a request wait for another's check; the scheduler
  runs ``check()`` on a timer and on SIGHUP.

What is written to the database (the version record, audit events) goes through
:class:`broker.policy_reports.ReloadReports`: a policy change never waits for the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError

from broker.db import Database, get_database
from broker.errors import ConfigError
from broker.models import utcnow
from broker.policy import (
    Evaluator,
    LoadedPolicy,
    PolicyFiles,
    PolicyLoadError,
    load_policy_files,
    read_policy_files,
)
from broker.policy.loader import POLICY_SUFFIXES
from broker.policy_reports import (
    ReloadReports,
    count,
    first_line,
    listing,
    refusal_event,
    reload_event,
)
from broker.policy_versions import PolicyVersions, StoredPolicy

EXTENSION = "broker.policy"
log = logging.getLogger(__name__)

RACY_NANOSECONDS = 3_000_000_000
"""A file changed this recently may change again within the same timestamp: hash it next time."""

Source = Literal["directory", "database"]


@dataclass(frozen=True)
class PolicySnapshot:
    """A loaded policy and its evaluator, swapped atomically on reload."""

    loaded: LoadedPolicy
    evaluator: Evaluator
    source: Source = "directory"
    """Where it came from: the policy directory, or the last good version in the database."""
    since: datetime = field(default_factory=utcnow)

    @property
    def version(self) -> str:
        """The policy version hash recorded with every decision."""
        return self.loaded.version_hash


@dataclass(frozen=True)
class Refusal:
    """Policy files on disk that did not validate (the policy in force stayed)."""

    version: str | None
    """Hash of the files read; None when the directory itself could not be read."""
    errors: tuple[str, ...]
    since: datetime

    @property
    def key(self) -> str:
        """What identifies this refusal, so the same bad files are reported once."""
        return self.version or "\n".join(self.errors)


@dataclass(frozen=True)
class PolicyStatus:
    """What this process says about its policy: the version in force, and the files on disk."""

    version: str
    source: Source
    since: datetime
    refused: Refusal | None
    checked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``/readyz``: versions, times and an error count (the errors are logged)."""
        body: dict[str, Any] = {
            "in_force": self.version,
            "source": self.source,
            "in_force_since": self.since.isoformat(),
            "files_on_disk": "refused" if self.refused else "in force",
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
        }
        if self.refused is not None:
            body["refused_version"] = self.refused.version
            body["refused_errors"] = len(self.refused.errors)
            body["refused_since"] = self.refused.since.isoformat()
        return body


@dataclass(frozen=True)
class _Fingerprint:
    entries: tuple[tuple[object, ...], ...]
    racy: bool


def fingerprint(directory: Path) -> _Fingerprint:
    """Names, sizes, times and inodes of the policy files: changes when any file may have."""
    entries: list[tuple[object, ...]] = []
    newest = 0
    try:
        top = os.stat(directory)
        entries.append(("", top.st_dev, top.st_ino))
        with os.scandir(directory) as found:
            for entry in found:
                if not entry.name.endswith(POLICY_SUFFIXES):
                    continue
                try:
                    st = entry.stat()  # follows symlinks (a swapped ConfigMap shows here)
                except OSError as exc:
                    entries.append((entry.name, "unreadable", exc.errno))
                    continue
                entries.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
                newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    except OSError as exc:
        return _Fingerprint((("", "unreadable", exc.errno),), racy=True)
    entries.sort(key=lambda e: str(e[0]))
    return _Fingerprint(tuple(entries), racy=time.time_ns() - newest < RACY_NANOSECONDS)


def _quoted(exc: PolicyLoadError) -> tuple[str, ...]:
    return tuple(str(issue) for issue in exc.errors)


class PolicyStore:
    """Holds this process's policy; ``check()`` reloads it and keeps the last good one."""

    def __init__(
        self,
        directory: Path,
        *,
        database: Database | None = None,
        interval: float = 10.0,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.versions = PolicyVersions(database, clock) if database is not None else None
        self.reports = ReloadReports(
            database, retry_base=interval, clock=clock, monotonic=monotonic
        )
        self.interval = interval
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._checked_at: datetime | None = None
        self._refused: Refusal | None = None
        self._fingerprint = fingerprint(directory)
        self._snapshot = self._start()

    # -- reading -----------------------------------------------------------------------------

    @property
    def current(self) -> PolicySnapshot:
        """The snapshot in force."""
        return self._snapshot

    @property
    def status(self) -> PolicyStatus:
        """The version in force and whether the files on disk were refused."""
        snapshot = self._snapshot
        return PolicyStatus(
            snapshot.version, snapshot.source, snapshot.since, self._refused, self._checked_at
        )

    # -- checking ----------------------------------------------------------------------------

    def check(self, *, force: bool = False, client: str | None = None) -> bool:
        """Look at the directory now (``force``: read it even if no file seems changed).

        Returns True when a new policy was put in force. Never raises for bad files.
        """
        with self._lock:
            try:
                return self._check(force, client)
            finally:
                self._next_check = self.monotonic() + self.interval

    def check_if_due(self, client: str = "web") -> None:
        """``check()`` if the interval has passed; return at once while another check runs."""
        if self.monotonic() < self._next_check or not self._lock.acquire(blocking=False):
            return
        try:
            if self.monotonic() >= self._next_check:
                self._check(False, client)
        except Exception:  # a bug here must not fail the request; the policy in force stays
            log.exception("policy check failed; the policy in force stays")
        finally:
            self._next_check = self.monotonic() + self.interval
            self._lock.release()

    def _check(self, force: bool, client: str | None) -> bool:
        self._checked_at = self.clock()
        self.reports.write(client)
        seen = fingerprint(self.directory)
        if not force and seen == self._fingerprint and not self._fingerprint.racy:
            return False
        try:
            files = read_policy_files(self.directory)
        except PolicyLoadError as exc:
            self._fingerprint = seen
            self._refuse(None, _quoted(exc), client)
            return False
        version = files.version
        current = self._snapshot
        if version == current.version and current.source == "directory":
            self._fingerprint = seen
            if self._refused is not None:
                self._refused = None
                log.info("policy files in %s are back to version %s", self.directory, version)
                self._reloaded(current, files, client)
            return False
        if self._refused is not None and version == self._refused.version:
            self._fingerprint = seen
            if force:
                log.error(
                    "policy files in %s are still refused (errors logged before)", self.directory
                )
            return False
        try:
            loaded = load_policy_files(files)
        except PolicyLoadError as exc:
            if fingerprint(self.directory) != seen:
                return False  # the files changed while being read: look again next time
            self._fingerprint = seen
            self._refuse(version, _quoted(exc), client)
            return False
        if fingerprint(self.directory) != seen:
            return False  # a half-written file may still parse: never put it in force
        self._fingerprint = seen
        self._accept(files, loaded, client)
        return True

    def _accept(self, files: PolicyFiles, loaded: LoadedPolicy, client: str | None) -> None:
        previous = self._snapshot
        for warning in loaded.warnings:
            log.warning("policy warning: %s", warning)
        self._snapshot = PolicySnapshot(loaded, loaded.evaluator, "directory", self.clock())
        self._refused = None
        self.reports.record(files)
        log.info(
            "policy reloaded from %s: version %s in force (was %s)",
            self.directory,
            files.version,
            previous.version,
        )
        self._reloaded(previous, files, client)

    def _reloaded(self, previous: PolicySnapshot, files: PolicyFiles, client: str | None) -> None:
        warnings = len(self._snapshot.loaded.warnings)
        event = reload_event(self.directory, previous.version, files, warnings, self.clock())
        self.reports.add(event, policy_version=self._snapshot.version, client=client)
        self.reports.write(client)

    def _refuse(self, version: str | None, errors: tuple[str, ...], client: str | None) -> None:
        refusal = Refusal(version, errors, self.clock())
        if self._refused is not None and self._refused.key == refusal.key:
            return
        self._refused = refusal
        in_force = self._snapshot.version
        log.error(
            "policy files in %s refused (%s); version %s stays in force:\n%s",
            self.directory,
            count(errors),
            in_force,
            listing(errors),
        )
        self._report_refusal(refusal, at_start=False, client=client)
        self.reports.write(client)

    def _report_refusal(self, refusal: Refusal, *, at_start: bool, client: str | None) -> None:
        snapshot = self._snapshot
        event = refusal_event(
            self.directory,
            refusal.version,
            refusal.errors,
            in_force=snapshot.version,
            source=snapshot.source,
            at_start=at_start,
            now=refusal.since,
        )
        self.reports.add(event, policy_version=snapshot.version, client=client)

    # -- starting ----------------------------------------------------------------------------

    def _start(self) -> PolicySnapshot:
        files: PolicyFiles | None = None
        try:
            files = read_policy_files(self.directory)
            loaded = load_policy_files(files)
        except PolicyLoadError as exc:
            return self._start_from_last_good(exc, files.version if files else None)
        for warning in loaded.warnings:
            log.warning("policy warning: %s", warning)
        self.reports.record(files)  # written by the first check, not while the app assembles
        return PolicySnapshot(loaded, loaded.evaluator, "directory", self.clock())

    def _start_from_last_good(self, exc: PolicyLoadError, version: str | None) -> PolicySnapshot:
        stored, why_not = self._last_good()
        if stored is None:
            raise ConfigError(
                f"BROKER_POLICY_DIR: the policy in {self.directory} is not valid:\n{exc}\n"
                f"No last good policy to serve instead: {why_not}.",
                hint="Fix the files listed above; `broker policy check` shows the same errors.",
            ) from exc
        try:
            loaded = load_policy_files(stored.files)
        except PolicyLoadError as stale:
            raise ConfigError(
                f"BROKER_POLICY_DIR: the policy in {self.directory} is not valid:\n{exc}\n"
                f"The last good policy in the database ({stored.version[:12]}) does not validate "
                f"with this version of the broker either:\n{stale}",
                hint="Fix the files listed first; `broker policy check` shows the same errors.",
            ) from exc
        snapshot = PolicySnapshot(loaded, loaded.evaluator, "database", self.clock())
        self._snapshot = snapshot
        self._refused = Refusal(version, _quoted(exc), self.clock())
        log.error(
            "policy files in %s are not valid (%s); serving the last good policy %s from "
            "the database (loaded %s by %s from %s) until they are fixed:\n%s",
            self.directory,
            count(exc.errors),
            stored.version,
            stored.last_loaded_at.isoformat(),
            stored.loaded_by,
            stored.source_dir,
            listing(_quoted(exc)),
        )
        self._report_refusal(self._refused, at_start=True, client=None)
        return snapshot

    def _last_good(self) -> tuple[StoredPolicy | None, str]:
        if self.versions is None:
            return None, "no database configured"
        try:
            stored = self.versions.last_good(self.directory)
        except SQLAlchemyError as exc:
            return None, f"the database could not be read ({first_line(exc)})"
        if stored is None:
            return None, "none was ever recorded in the database"
        if not stored.intact:
            return None, f"the stored files of {stored.version[:12]} do not match their hash"
        return stored, ""


# -- Flask wiring ------------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Load the policy (or the last good one), and check the directory before requests."""
    app.extensions[EXTENSION] = PolicyStore(
        Path(app.config["POLICY_DIR"]),
        database=get_database(app),
        interval=float(app.config["POLICY_RELOAD_SECONDS"]),
    )
    app.before_request(_check_policy)


def _check_policy() -> None:
    policy_store().check_if_due("web")


def policy_store(app: Flask | None = None) -> PolicyStore:
    """The app's PolicyStore."""
    store: PolicyStore = (app or current_app).extensions[EXTENSION]
    return store


def get_policy(app: Flask | None = None) -> PolicySnapshot:
    """The policy snapshot in force for this app."""
    return policy_store(app).current
