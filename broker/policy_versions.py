"""The policy versions that were put in force, kept in the database with their files.

Every process that puts a policy in force records it here. The most recently loaded version is
the *last good policy*: a process that starts while the files on disk do not validate serves it
instead of refusing to start, so one bad file cannot take down a restarted worker or a new host
(the database is shared by every host, where an instance folder is not). The rows also tell an
auditor what the policy version named by an audit event said.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from broker.db import Database
from broker.models import PolicyVersion, utcnow
from broker.policy import PolicyFiles


@dataclass(frozen=True)
class StoredPolicy:
    """A policy version read back from the database."""

    version: str
    files: PolicyFiles
    source_dir: str
    last_loaded_at: datetime
    loaded_by: str

    @property
    def intact(self) -> bool:
        """Whether the stored files still hash to the version they were recorded under."""
        return self.files.version == self.version


class PolicyVersions:
    """Records policy versions put in force and reads back the last good one."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = database
        self.clock = clock

    def record(self, files: PolicyFiles, *, loaded_by: str) -> None:
        """Record that a process put these (validated) files in force now."""
        now = self.clock()
        values = {
            "version": files.version,
            "files": {name: raw.decode("utf-8") for name, raw in files.contents},
            "source_dir": str(files.directory)[:1024],
            "first_loaded_at": now,
            "last_loaded_at": now,
            "loaded_by": loaded_by[:255],
        }
        insert = pg_insert if self.db.dialect == "postgresql" else sqlite_insert
        statement = (
            insert(PolicyVersion)
            .values(**values)
            .on_conflict_do_update(
                index_elements=[PolicyVersion.version],
                set_={"last_loaded_at": now, "loaded_by": values["loaded_by"]},
            )
        )
        with self.db.session() as session:
            session.execute(statement)

    def last_good(self, directory: Path) -> StoredPolicy | None:
        """The most recently loaded version (its files placed in `directory`), or None."""
        with self.db.read_session() as session:
            row = session.scalars(
                select(PolicyVersion)
                .order_by(PolicyVersion.last_loaded_at.desc(), PolicyVersion.version)
                .limit(1)
            ).first()
            if row is None:
                return None
            contents = tuple(sorted((n, str(t).encode("utf-8")) for n, t in row.files.items()))
            return StoredPolicy(
                version=row.version,
                files=PolicyFiles(directory, contents),
                source_dir=row.source_dir,
                last_loaded_at=row.last_loaded_at,
                loaded_by=row.loaded_by,
            )
