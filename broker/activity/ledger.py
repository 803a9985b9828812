"""The reader's book-keeping: which CloudTrail files are claimed or settled, and the cursors.

A file is *claimed* by inserting its row in ``cloudtrail_files`` (unique bucket and key) with a
random token; whoever loses that race skips the file. Only the token's holder may settle it
(``done`` or ``malformed``), inside the transaction that stores what the file held, so a holder
whose claim was taken over (it went stale) fails to commit. A claim given back (a read that
failed for a reason worth retrying) is deleted, so the file is claimable again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from broker.db import Database
from broker.models import ActivityCursor, CloudTrailFile, new_id


def insert_for(database: Database, target: Any) -> Any:
    """An INSERT that can say ON CONFLICT, in the database's own dialect."""
    dialect = postgresql if database.dialect == "postgresql" else sqlite
    return dialect.insert(target)


@dataclass(frozen=True)
class Claim:
    """This reader's hold on one file."""

    file_id: int
    token: str
    key: str


class FileLedger:
    """Claims, settles and forgets files of one bucket; moves cursors (see the module doc)."""

    def __init__(
        self,
        database: Database,
        bucket: str,
        *,
        holder: str,
        clock: Callable[[], datetime],
        stale_after: timedelta,
        forget_after: timedelta,
    ) -> None:
        self.db = database
        self.bucket = bucket
        self.holder = holder[:255]
        self.clock = clock
        self.stale_after = stale_after
        self.forget_after = forget_after

    def claim(self, key: str) -> Claim | None:
        """Insert the file's row, or take over a stale claim; None when another reader has it."""
        now = self.clock()
        token = new_id()
        with self.db.session() as session:
            file_id = session.execute(
                insert_for(self.db, CloudTrailFile)
                .values(
                    bucket=self.bucket,
                    key=key,
                    status="claimed",
                    claim_token=token,
                    claimed_by=self.holder,
                    claimed_at=now,
                    attempts=1,
                    records=0,
                    attributed=0,
                    bad_records=0,
                )
                .on_conflict_do_nothing(index_elements=["bucket", "key"])
                .returning(CloudTrailFile.id)
            ).scalar()
            if file_id is None:
                file_id = session.execute(
                    update(CloudTrailFile)
                    .where(
                        CloudTrailFile.bucket == self.bucket,
                        CloudTrailFile.key == key,
                        CloudTrailFile.status == "claimed",
                        CloudTrailFile.claimed_at < now - self.stale_after,
                    )
                    .values(
                        claim_token=token,
                        claimed_by=self.holder,
                        claimed_at=now,
                        attempts=CloudTrailFile.attempts + 1,
                    )
                    .returning(CloudTrailFile.id)
                ).scalar()
        return Claim(int(file_id), token, key) if file_id is not None else None

    def settle(self, session: Session, claim: Claim, status: str, **facts: Any) -> bool:
        """Mark a claimed file ``done`` or ``malformed`` in the caller's transaction; False
        when the claim is no longer this reader's (the caller must then roll back)."""
        owned = session.execute(
            update(CloudTrailFile)
            .where(
                CloudTrailFile.id == claim.file_id,
                CloudTrailFile.claim_token == claim.token,
                CloudTrailFile.status == "claimed",
            )
            .values(status=status, done_at=self.clock(), **facts)
        )
        return bool(owned.rowcount == 1)  # type: ignore[attr-defined]

    def release(self, claim: Claim) -> None:
        """Give a claim back: the file is read again on a later pass."""
        try:
            with self.db.session() as session:
                session.execute(
                    delete(CloudTrailFile).where(
                        CloudTrailFile.id == claim.file_id,
                        CloudTrailFile.claim_token == claim.token,
                        CloudTrailFile.status == "claimed",
                    )
                )
        except SQLAlchemyError:
            pass  # the claim goes stale and is taken over later

    def stale(self, *, limit: int = 100) -> list[str]:
        """Keys of files whose reader stopped mid-file (their claim went stale)."""
        cutoff = self.clock() - self.stale_after
        with self.db.read_session() as session:
            return list(
                session.scalars(
                    select(CloudTrailFile.key)
                    .where(
                        CloudTrailFile.bucket == self.bucket,
                        CloudTrailFile.status == "claimed",
                        CloudTrailFile.claimed_at < cutoff,
                    )
                    .limit(limit)
                ).all()
            )

    def known(self, keys: Sequence[str]) -> set[str]:
        """Which of these keys have a row (claimed or settled)."""
        with self.db.read_session() as session:
            return set(
                session.scalars(
                    select(CloudTrailFile.key).where(
                        CloudTrailFile.bucket == self.bucket, CloudTrailFile.key.in_(keys)
                    )
                ).all()
            )

    def prune(self) -> None:
        """Forget settled files long behind every cursor (they are never listed again)."""
        cutoff = self.clock() - self.forget_after
        with self.db.session() as session:
            session.execute(
                delete(CloudTrailFile).where(
                    CloudTrailFile.bucket == self.bucket,
                    CloudTrailFile.status.in_(("done", "malformed")),
                    CloudTrailFile.done_at < cutoff,
                )
            )

    # -- cursors -------------------------------------------------------------------------------

    def cursor(self, name: str) -> str | None:
        """The last key settled under a cursor, or None for a new one."""
        with self.db.read_session() as session:
            row = session.get(ActivityCursor, name)
            return row.position if row is not None else None

    def save_cursor(self, name: str, key: str) -> None:
        """Move a cursor forward (never back, whichever reader wrote it last)."""
        now = self.clock()
        with self.db.session() as session:
            row = session.get(ActivityCursor, name, with_for_update=True)
            if row is None:
                session.execute(
                    insert_for(self.db, ActivityCursor)
                    .values(name=name, position=key, updated_at=now)
                    .on_conflict_do_nothing(index_elements=["name"])
                )
            elif key > row.position:
                row.position = key
                row.updated_at = now
