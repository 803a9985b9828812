"""The scheduler's side of grants: end them on time and queue denies for live sessions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Exists,
    Row,
    Select,
    Table,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from broker.audit import NewEvent
from broker.db import Database
from broker.grants.core import GrantCore
from broker.grants.lost import IN_FLIGHT_MAX, arm, lost_session_event
from broker.grants.types import (
    LIVE,
    RequestMeta,
)
from broker.locks import try_xact_lock
from broker.models import (
    Grant,
    GrantStatus,
    IssuedSession,
    Principal,
    Revocation,
    RevocationStatus,
    new_id,
)
from broker.wakeup import notify


class EndingMixin(GrantCore):
    """Ending grants (expiry, revocation, contractors, lapse) and queueing denies on AWS."""

    def expire_due(self, *, limit: int = 500) -> list[str]:
        """End active grants past `expires_at` and lapse stale pending ones; return their ids.

        Rows are claimed with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so several schedulers
        never end the same grant twice. A batch is a handful of statements whatever its size:
        the grants are ended with one UPDATE, their denies and audit events are inserted in
        bulk, and the audit head is locked once, at the end.
        """
        now = self.clock()
        with self._tx() as session:
            query = (
                select(
                    Grant.id,
                    Grant.principal_id,
                    Grant.role_arn,
                    Grant.entitlement_id,
                    Principal.email,
                    Principal.source_identity,
                )
                .join(Principal, Principal.id == Grant.principal_id)
                .where(Grant.status == GrantStatus.ACTIVE, Grant.expires_at <= now)
                .order_by(Grant.expires_at)
                .limit(limit)
            )
            due = session.execute(_skip_locked(query, self.db)).all()
            if not due:
                return []
            ids = [row.id for row in due]
            known = _Prefetched.load(session, due, cutoff=now)
            session.execute(
                update(Grant)
                .where(Grant.id.in_(ids))
                .values(
                    status=GrantStatus.EXPIRED,
                    ended_at=now,
                    ended_by="scheduler",
                    end_reason="grant ended",
                )
                .execution_options(synchronize_session=False)
            )
            revocations: list[dict[str, Any]] = []
            events: list[NewEvent] = []
            for row in due:
                denies = []
                last_expiry = known.last_expiry.get(row.id)
                others = known.others_active(row)
                if last_expiry is not None:
                    denies.append(_deny_row(row, "grant" if others else "person", now, last_expiry))
                revocations.extend(denies)
                events.append(
                    NewEvent(
                        "grant.expired",
                        target=row.entitlement_id,
                        decision="end",
                        reason="grant ended",
                        details={
                            "grant_id": row.id,
                            "person": row.email,
                            "role_arn": row.role_arn,
                            "revocations": [d["id"] for d in denies],
                        },
                    )
                )
            if revocations:
                session.execute(insert(cast(Table, Revocation.__table__)), revocations)
                notify(session)
            self.audit.append_many(session, self._ectx("scheduler", None), events)
        return ids

    def end_contractors_past_end_date(self, *, limit: int = 500) -> list[str]:
        """End the live grants of contractors whose `valid_until` has passed; return their ids.

        Active grants expire, pending ones lapse, and every role where the person still holds
        live sessions gets a person-wide deny (their engagement is over, whatever the grant).
        """
        now = self.clock()
        ended: list[str] = []
        with self._tx() as session:
            query = (
                select(Grant)
                .join(Principal, Principal.id == Grant.principal_id)
                .where(
                    Principal.kind == "contractor",
                    Principal.valid_until <= now,
                    Grant.status.in_(LIVE),
                )
                .order_by(Grant.expires_at)
                .limit(limit)
            )
            people: dict[str, Principal] = {}
            for grant in session.scalars(_skip_locked(query, self.db)).unique().all():
                status = GrantStatus.EXPIRED if grant.status == "active" else GrantStatus.LAPSED
                reason = "contractor engagement ended (valid_until passed)"
                self._end(session, grant, status, "scheduler", reason, None)
                people[grant.principal_id] = grant.principal
                ended.append(grant.id)
            for principal in people.values():
                self._person_revocations(session, principal, cutoff=now)
        return ended

    def reconcile(self) -> list[str]:
        """Queue a deny for every live session whose grant is over and that no deny covers.

        Catches sessions recorded after their grant ended (an issue racing a revoke) and
        anything a crash or a manual database change left behind, and arms the deny of every
        issuance that never finished (see :mod:`broker.grants.lost`). Returns the new or armed
        revocation ids. On PostgreSQL one scheduler reconciles at a time (advisory lock).

        The uncovered sessions are found by the database in one anti-join (:func:`_uncovered`),
        first in a read-only transaction (on SQLite it takes no write lock), so a backlog where
        every session is covered costs the same two queries whatever its size, and the work in
        Python is proportional to what is found.
        """
        now = self.clock()
        with self.db.read_session() as session:
            if not session.execute(_uncovered(now).limit(1)).first() and not session.scalar(
                _abandoned(now).with_only_columns(Revocation.id).limit(1)
            ):
                return []
        queued: list[str] = []
        with self._tx() as session:
            if not try_xact_lock(session, "broker:reconcile"):
                return []
            queued.extend(self._arm_abandoned(session, now))
            counts: dict[str, int] = {gid: int(n) for gid, n in session.execute(_uncovered(now))}
            if not counts:
                return queued
            grants = session.scalars(
                select(Grant).where(Grant.id.in_(list(counts))).order_by(Grant.id)
            ).all()
            for grant in grants:
                revocations = self._grant_revocations(session, grant, cutoff=now)
                queued.extend(r.id for r in revocations)
                self._record(
                    session,
                    self._ectx("scheduler", None),
                    NewEvent(
                        "revocation.queued",
                        target=grant.role_arn,
                        decision="revoke",
                        reason=f"reconcile: {counts[grant.id]} live session(s) of {grant.status} "
                        "grant had no deny",
                        details={
                            "grant_id": grant.id,
                            "person": grant.principal.email,
                            "revocations": [r.id for r in revocations],
                        },
                    ),
                )
        return queued

    def _arm_abandoned(self, session: Session, now: datetime, *, limit: int = 500) -> list[str]:
        """Arm the standby deny of every issuance that neither recorded nor armed it in time."""
        query = _abandoned(now).order_by(Revocation.created_at).limit(limit)
        if self.db.dialect == "postgresql":  # an issuance still recording holds its row
            query = query.with_for_update(skip_locked=True)
        armed: list[str] = []
        reason = (
            f"no outcome was recorded for this AssumeRole within {IN_FLIGHT_MAX} (the broker "
            "lost its database or stopped mid-issue): AWS may have made the session"
        )
        for row in session.scalars(query).all():
            arm(row, now)
            self._record(
                session,
                self._ectx("scheduler", None),
                lost_session_event("credentials.unrecorded", row, reason),
            )
            armed.append(row.id)
        return armed

    def lapse_pending(self, max_age: timedelta, *, limit: int = 500) -> list[str]:
        """Pending requests nobody decided within `max_age` lapse."""
        now = self.clock()
        lapsed: list[str] = []
        with self._tx() as session:
            query = (
                select(Grant)
                .where(Grant.status == GrantStatus.PENDING, Grant.created_at <= now - max_age)
                .limit(limit)
            )
            for grant in session.scalars(_skip_locked(query, self.db)).all():
                self._end(session, grant, GrantStatus.LAPSED, "scheduler", "nobody approved", None)
                lapsed.append(grant.id)
        return lapsed

    def _end(
        self,
        session: Session,
        grant: Grant,
        status: GrantStatus,
        actor: str,
        reason: str | None,
        meta: RequestMeta | None,
        known: _Prefetched | None = None,
    ) -> None:
        now = self.clock()
        was = grant.status
        grant.status = status
        grant.ended_at = now
        grant.ended_by = actor
        grant.end_reason = reason
        revocations = (
            self._grant_revocations(session, grant, cutoff=now, known=known)
            if was == "active"
            else []
        )
        self._record(
            session,
            self._ectx(actor, meta),
            NewEvent(
                f"grant.{status.value}",
                target=grant.entitlement_id,
                decision="revoke" if status is GrantStatus.REVOKED else "end",
                reason=reason,
                details={
                    "grant_id": grant.id,
                    "person": grant.principal.email,
                    "role_arn": grant.role_arn,
                    "revocations": [r.id for r in revocations],
                },
            ),
        )

    def _grant_revocations(
        self,
        session: Session,
        grant: Grant,
        *,
        cutoff: datetime,
        known: _Prefetched | None = None,
    ) -> list[Revocation]:
        """Queue a deny for the ended grant's sessions that may still be live.

        ``known`` carries the same facts prefetched for a whole batch (the scheduler ending
        hundreds of grants at once), saving two queries per grant.
        """
        other_active: int | None
        if known is not None:
            last_expiry = known.last_expiry.get(grant.id)
            other_active = known.others_active(grant)
        else:
            last_expiry = session.scalar(
                select(func.max(IssuedSession.expires_at)).where(
                    IssuedSession.grant_id == grant.id, IssuedSession.expires_at > cutoff
                )
            )
            other_active = session.scalar(
                select(func.count())
                .select_from(Grant)
                .where(
                    Grant.principal_id == grant.principal_id,
                    Grant.role_arn == grant.role_arn,
                    Grant.status == GrantStatus.ACTIVE,
                    Grant.id != grant.id,
                )
            )
        if last_expiry is None:
            return []
        revocation = Revocation(
            id=new_id(),
            role_arn=grant.role_arn,
            scope="grant" if other_active else "person",
            source_identity=grant.principal.source_identity,
            grant_id=grant.id,
            principal_id=grant.principal_id,
            cutoff=cutoff,
            drop_after=last_expiry,
            status=RevocationStatus.PENDING,
            next_attempt_at=cutoff,
            created_at=cutoff,
        )
        session.add(revocation)  # its id is set above: no flush needed, the commit batches
        notify(session)  # the schedulers put it in place as soon as this commits
        return [revocation]

    def _person_revocations(
        self, session: Session, principal: Principal, *, cutoff: datetime
    ) -> None:
        """Queue a person-wide deny on every role where they still hold live sessions."""
        rows = session.execute(
            select(IssuedSession.role_arn, func.max(IssuedSession.expires_at))
            .where(IssuedSession.principal_id == principal.id, IssuedSession.expires_at > cutoff)
            .group_by(IssuedSession.role_arn)
        ).all()
        if rows:
            notify(session)
        for role_arn, last_expiry in rows:
            session.add(
                Revocation(
                    role_arn=role_arn,
                    scope="person",
                    source_identity=principal.source_identity,
                    principal_id=principal.id,
                    cutoff=cutoff,
                    drop_after=last_expiry,
                    status=RevocationStatus.PENDING,
                    next_attempt_at=cutoff,
                    created_at=cutoff,
                )
            )
        session.flush()


@dataclass
class _Prefetched:
    """Facts about a batch of grants about to end, read in two queries instead of 2 per grant."""

    last_expiry: dict[str, datetime]  # grant id -> last expiry of its still-live sessions
    active: dict[tuple[str, str], int]  # (principal, role) -> active grants, batch included

    @classmethod
    def load(
        cls, session: Session, grants: Sequence[Grant | Row[Any]], *, cutoff: datetime
    ) -> _Prefetched:
        """Read the batch's live-session expiries and its people's active grant counts."""
        ids = [g.id for g in grants]
        people = {g.principal_id for g in grants}
        last: dict[str, datetime] = {}
        active: dict[tuple[str, str], int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for grant_id, expiry in session.execute(
                select(IssuedSession.grant_id, func.max(IssuedSession.expires_at))
                .where(IssuedSession.grant_id.in_(chunk), IssuedSession.expires_at > cutoff)
                .group_by(IssuedSession.grant_id)
            ).all():
                last[grant_id] = expiry
        listed = sorted(people)
        for start in range(0, len(listed), 500):
            for principal_id, role_arn, count in session.execute(
                select(Grant.principal_id, Grant.role_arn, func.count())
                .where(
                    Grant.principal_id.in_(listed[start : start + 500]),
                    Grant.status == GrantStatus.ACTIVE,
                )
                .group_by(Grant.principal_id, Grant.role_arn)
            ).all():
                active[(principal_id, role_arn)] = int(count)
        return cls(last, active)

    def others_active(self, grant: Grant | Row[Any]) -> int:
        """Active grants of this person on this role besides ``grant``, which is ending now."""
        key = (grant.principal_id, grant.role_arn)
        remaining = max(self.active.get(key, 0) - 1, 0)
        self.active[key] = remaining
        return remaining


def _deny_row(due: Row[Any], scope: str, cutoff: datetime, last_expiry: datetime) -> dict[str, Any]:
    """A pending deny for an ended grant's sessions (what `_grant_revocations` adds)."""
    return {
        "id": new_id(),
        "role_arn": due.role_arn,
        "scope": scope,
        "source_identity": due.source_identity,
        "grant_id": due.id,
        "principal_id": due.principal_id,
        "cutoff": cutoff,
        "drop_after": last_expiry,
        "status": RevocationStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": cutoff,
        "created_at": cutoff,
    }


def _skip_locked(query: Any, database: Database) -> Any:
    if database.dialect == "postgresql":
        # Lock only the grant rows: a principal's other grants stay claimable by other nodes.
        return query.with_for_update(skip_locked=True, of=Grant)
    return query  # SQLite: BEGIN IMMEDIATE already makes this transaction the only writer


def _abandoned(now: datetime) -> Select[Revocation]:
    """Standby denies whose issuance neither recorded nor armed them in time."""
    return select(Revocation).where(
        Revocation.status == RevocationStatus.STANDBY,
        Revocation.created_at <= now - IN_FLIGHT_MAX,
    )


def _uncovered(now: datetime) -> Select[str, int]:
    """Live sessions of grants no longer active that no live deny covers, counted per grant.

    A deny covers a session on its role until the session expires (``drop_after``), when it
    names the session's grant, the session itself, its person with a cutoff at or after the
    session was issued, or everyone on the role with such a cutoff.
    """
    s, r = IssuedSession, Revocation

    def covered(target: ColumnElement[bool]) -> Exists:
        return exists().where(
            r.role_arn == s.role_arn,
            r.status.in_((RevocationStatus.PENDING, RevocationStatus.APPLIED)),
            r.drop_after >= s.expires_at,
            target,
        )

    return (
        select(s.grant_id, func.count())
        .join(Grant, Grant.id == s.grant_id)
        .where(
            s.expires_at > now,
            Grant.status != GrantStatus.ACTIVE,
            # The usual cover first (a person's cutoff, then a grant's): a covered session is
            # settled by the first test that finds its deny.
            ~covered(
                (r.scope == "person")
                & (r.source_identity == s.source_identity)
                & (r.cutoff >= s.issued_at)
            ),
            ~covered((r.scope == "grant") & (r.grant_id == s.grant_id)),
            ~covered((r.scope == "session") & (r.role_session_name == s.role_session_name)),
            ~covered((r.scope == "role") & (r.cutoff >= s.issued_at)),
        )
        .group_by(s.grant_id)
    )
