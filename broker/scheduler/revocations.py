"""Putting queued revocations in place on AWS, role by role, exactly once.

For each role with work to do (a pending revocation whose retry time has come, or an applied
one whose sessions have all expired), the whole role is re-planned from *every* live
revocation row of that role and written with one ``PutRolePolicy`` (or one delete when nothing
is left). Roles are independent, so a pass works on a few of them at a time (``WORKERS``). On
PostgreSQL the role is held by an advisory lock for the pass, so two schedulers never
overwrite each other's policy. Rows are marked applied or dropped and the pass is
audited in one transaction *after* IAM answered; a crash in between only means the next pass
writes the same document again (IAM's write is idempotent) and audits it then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update

from broker.audit import AuditLog, EventContext, NewEvent
from broker.db import Database
from broker.locks import advisory_lock
from broker.models import Revocation, RevocationStatus
from broker.revocation import DenyEntry, PolicyPlan, RevocationPending, RoleRevoker

log = logging.getLogger(__name__)

WORKERS = 4
"""Roles put in place at once: IAM calls are network round trips, so a pass over many roles
overlaps them (few enough to stay well inside IAM's request rate)."""


@dataclass
class PassResult:
    """What one revocation pass did, role by role."""

    applied: dict[str, list[str]] = field(default_factory=dict)  # role -> revocation ids
    dropped: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # role -> error
    skipped: list[str] = field(default_factory=list)  # held by another scheduler
    puts: int = 0

    @classmethod
    def merged(cls, parts: Iterable[PassResult]) -> PassResult:
        """One result for several roles' results."""
        result = cls()
        for part in parts:
            result.applied.update(part.applied)
            result.dropped.update(part.dropped)
            result.failed.update(part.failed)
            result.skipped.extend(part.skipped)
            result.puts += part.puts
        return result


class RevocationApplier:
    """Applies the due revocations of every role (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        revoker: RoleRevoker,
        *,
        clock: Callable[[], datetime],
        policy_version: Callable[[], str | None] = lambda: None,
        retry_max: timedelta = timedelta(minutes=5),
        retry_base: timedelta = timedelta(seconds=2),
        workers: int = WORKERS,
    ) -> None:
        self.db = database
        self.workers = workers
        self.revoker = revoker
        self.clock = clock
        self.audit = AuditLog(clock)
        self.policy_version = policy_version
        self.retry_max = retry_max
        self.retry_base = retry_base

    def due_roles(self) -> list[str]:
        """Roles with a pending revocation ready to try, or an applied one ready to drop."""
        now = self.clock()
        with self.db.read_session() as session:
            roles = session.scalars(
                select(Revocation.role_arn)
                .where(_due(now))
                .group_by(Revocation.role_arn)
                .order_by(Revocation.role_arn)
            ).all()
        return list(roles)

    def run(self) -> PassResult:
        """One pass over every due role, ``workers`` roles at a time (each role's work is
        independent: its own lock, rows, IAM calls and transactions)."""
        roles = self.due_roles()
        if self.workers <= 1 or len(roles) <= 1:
            result = PassResult()
            for role_arn in roles:
                self.apply_role(role_arn, result)
            return result
        with ThreadPoolExecutor(min(self.workers, len(roles)), "broker-revoke") as pool:
            return PassResult.merged(pool.map(self.apply_role, roles))

    def apply_role(self, role_arn: str, result: PassResult | None = None) -> PassResult:
        """Re-plan and write one role's policy if it still has due work (under its lock)."""
        result = result if result is not None else PassResult()
        with advisory_lock(self.db, f"broker:revocations:{role_arn}") as held:
            if not held:
                result.skipped.append(role_arn)
                return result
            now = self.clock()
            with self.db.read_session() as session:
                rows = list(
                    session.scalars(
                        select(Revocation)
                        .where(
                            Revocation.role_arn == role_arn,
                            Revocation.status.in_(_LIVE),
                        )
                        .order_by(Revocation.created_at, Revocation.id)
                    ).all()
                )
            # Checked again under the lock: another scheduler may have just done this role.
            if not any(_is_due(r, now) for r in rows):
                return result
            entries, unusable = _entries(rows)
            try:
                applied = self.revoker.apply(role_arn, entries)
            except RevocationPending as exc:
                self._failed(role_arn, rows, exc.message)
                result.failed[role_arn] = exc.message
                return result
            self._applied(role_arn, rows, applied.plan, applied.put, applied.attempts, result)
            if unusable:
                self._failed(role_arn, unusable, "revocation row is incomplete; fix or drop it")
            result.puts += int(applied.put)
        return result

    def _applied(
        self,
        role_arn: str,
        rows: list[Revocation],
        plan: PolicyPlan,
        put: bool,
        attempts: int,
        result: PassResult,
    ) -> None:
        now = self.clock()
        kept = {e.ref for e in plan.entries_kept}
        dropped = {e.ref for e in plan.entries_dropped}
        newly_applied: list[str] = []
        newly_dropped: list[str] = []
        for row in rows:
            if row.id in dropped:
                newly_dropped.append(row.id)
            elif row.id in kept and row.status == RevocationStatus.PENDING:
                newly_applied.append(row.id)
        with self.db.session() as session:
            for chunk in _chunks(newly_dropped):
                session.execute(
                    update(Revocation)
                    .where(Revocation.id.in_(chunk))
                    .values(status=RevocationStatus.DROPPED)
                )
            for chunk in _chunks(newly_applied):
                session.execute(
                    update(Revocation)
                    .where(Revocation.id.in_(chunk))
                    .values(
                        status=RevocationStatus.APPLIED,
                        applied_at=now,
                        attempts=Revocation.attempts + attempts,
                        last_error=None,
                        next_attempt_at=None,
                    )
                )
            ctx = self._ctx()
            self.audit.append(
                session,
                ctx,
                NewEvent(
                    "revocation.applied",
                    target=role_arn,
                    decision="revoke",
                    reason="policy written" if put else "policy already in place",
                    details={
                        "applied": newly_applied,
                        "dropped": newly_dropped,
                        "live": len(kept),
                        "policy_size": plan.size,
                        "policy_deleted": plan.document is None,
                        "iam_attempts": attempts,
                        "compaction": list(plan.compaction),
                    },
                ),
            )
            if plan.role_wide_cutoff is not None:
                self.audit.append(
                    session,
                    ctx,
                    NewEvent(
                        "revocation.role_wide",
                        target=role_arn,
                        decision="revoke",
                        reason="too many revocations for IAM's inline policy budget: every "
                        "session of this role issued before the cutoff is denied",
                        details={
                            "cutoff": plan.role_wide_cutoff.isoformat(),
                            "compaction": list(plan.compaction),
                        },
                    ),
                )
        result.applied[role_arn] = newly_applied
        result.dropped[role_arn] = newly_dropped

    def _failed(self, role_arn: str, rows: list[Revocation], error: str) -> None:
        now = self.clock()
        pending = [r for r in rows if r.status == RevocationStatus.PENDING]
        with self.db.session() as session:
            attempts = 0
            for row in pending:
                fresh = session.get_one(Revocation, row.id)
                fresh.attempts = row.attempts + 1
                fresh.last_error = error[:2000]
                fresh.next_attempt_at = now + self._backoff(fresh.attempts)
                attempts = max(attempts, fresh.attempts)
            log.warning("revocation on %s still pending: %s", role_arn, error)
            self.audit.append(
                session,
                self._ctx(),
                NewEvent(
                    "revocation.failed",
                    target=role_arn,
                    decision="error",
                    reason=error[:2000],
                    details={
                        "pending": [r.id for r in pending],
                        "attempts": attempts,
                        "next_attempt_at": (now + self._backoff(attempts)).isoformat(),
                    },
                ),
            )

    def _backoff(self, attempts: int) -> timedelta:
        delay: timedelta = self.retry_base * 2 ** max(attempts - 1, 0)
        return min(delay, self.retry_max)

    def _ctx(self) -> EventContext:
        return EventContext(
            actor="scheduler", client="scheduler", policy_version=self.policy_version()
        )


# Standby rows (an AssumeRole in flight) are not on AWS until armed; dropped ones never again.
_LIVE = (RevocationStatus.PENDING, RevocationStatus.APPLIED)


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(
        (Revocation.status == RevocationStatus.PENDING)
        & (or_(Revocation.next_attempt_at.is_(None), Revocation.next_attempt_at <= now)),
        (Revocation.status == RevocationStatus.APPLIED) & (Revocation.drop_after <= now),
    )


def _is_due(row: Revocation, now: datetime) -> bool:
    if row.status == RevocationStatus.PENDING:
        return row.next_attempt_at is None or row.next_attempt_at <= now
    return row.status == RevocationStatus.APPLIED and row.drop_after <= now


def _entries(rows: list[Revocation]) -> tuple[list[DenyEntry], list[Revocation]]:
    """DenyEntries for the rows; rows that cannot become one are returned apart."""
    entries: list[DenyEntry] = []
    unusable: list[Revocation] = []
    for row in rows:
        if row.scope not in ("grant", "person", "role", "session"):
            unusable.append(row)
            continue
        try:
            entries.append(
                DenyEntry(
                    scope=row.scope,  # type: ignore[arg-type]  # checked just above
                    cutoff=row.cutoff,
                    drop_after=row.drop_after,
                    source_identity=row.source_identity,
                    grant_id=row.grant_id,
                    ref=row.id,
                    role_session_name=row.role_session_name,
                )
            )
        except ValueError as exc:
            log.error("revocation %s cannot be applied: %s", row.id, exc)
            unusable.append(row)
    return entries, unusable
