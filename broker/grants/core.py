"""Shared steps of grant operations: transactions, audit, policy checks, new grants."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import Select, bindparam, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from broker import ratelimit
from broker.audit import AuditLog, EventContext, NewEvent
from broker.db import Database
from broker.errors import (
    AuditUnavailable,
    BadRequest,
    BrokerError,
    Forbidden,
    NotFound,
    PolicyDenied,
)
from broker.grants.types import (
    LIVE,
    Caller,
    GrantExists,
    RequestMeta,
    main_reason,
    short_duration,
)
from broker.models import (
    Grant,
    GrantStatus,
    Principal,
    utcnow,
)
from broker.policy import Decision, Person, RequestContext, Verdict
from broker.policy_store import PolicySnapshot
from broker.ratelimit import RateLimit, RateLimited
from broker.sts import (
    RoleLimits,
    StsIssuer,
)

log = logging.getLogger(__name__)


class GrantCore:
    """Collaborators and the shared steps every grant operation is built from."""

    def __init__(
        self,
        database: Database,
        policy: PolicySnapshot,
        issuer: StsIssuer,
        role_limits: RoleLimits,
        *,
        audit: AuditLog | None = None,
        clock: Callable[[], datetime] = utcnow,
        claims_max_age: timedelta = timedelta(minutes=15),
    ) -> None:
        self.db = database
        self.claims_max_age = claims_max_age
        self.policy = policy
        self.issuer = issuer
        self.role_limits = role_limits
        self.audit = audit or AuditLog(clock)
        self.clock = clock

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """A transaction; database failures become AuditUnavailable (nothing was done)."""
        try:
            with self.db.session() as session:
                yield session
        except SQLAlchemyError as exc:
            log.error("database write failed, nothing done: %s", exc)
            raise AuditUnavailable(
                "The broker could not record this in its audit trail, so nothing was done.",
                hint="Try again shortly; if it persists, tell the platform team.",
            ) from exc

    def _ctx(self, meta: RequestMeta) -> RequestContext:
        return RequestContext(now=self.clock(), source_ip=meta.ip)

    def _ectx(self, actor: str, meta: RequestMeta | None) -> EventContext:
        meta = meta or RequestMeta(client="scheduler")
        return EventContext(
            actor=actor,
            ip=meta.ip,
            user_agent=meta.user_agent,
            client=meta.client,
            policy_version=self.policy.version,
        )

    def _record(self, session: Session, ectx: EventContext, event: NewEvent) -> None:
        self.audit.append(session, ectx, event)

    def _best_effort_record(
        self, ectx: EventContext, event: NewEvent, limit: RateLimit | None = None
    ) -> None:
        try:
            with self._tx() as session:
                if limit is not None:  # a refused attempt still counts against the limit
                    ratelimit.count_hit(session, limit)
                self._record(session, ectx, event)
        except AuditUnavailable:
            pass  # the original error is what the caller needs to see

    @contextmanager
    def _denials_audited(
        self,
        caller: Caller,
        meta: RequestMeta,
        action: str,
        entitlement_id: str,
        limit: RateLimit | None = None,
    ) -> Iterator[None]:
        """Audit a refusal after the refused transaction has rolled back (never inside it).

        Being rate limited is not audited (the limit exists to keep floods out of the trail).
        """
        try:
            yield
        except (AuditUnavailable, RateLimited):
            raise
        except BrokerError as exc:
            self._best_effort_record(
                self._ectx(caller.email, meta),
                NewEvent(
                    action,
                    target=entitlement_id,
                    decision="deny",
                    reason=exc.message,
                    details={"code": exc.code},
                ),
                limit,
            )
            raise

    def _live_principal(self, session: Session, caller: Caller) -> Principal:
        principal = session.get(Principal, caller.principal_id)
        if principal is None or principal.disabled:
            raise Forbidden(
                "Your access to the broker has been cut off by an administrator.",
                hint="Contact your security team.",
            )
        return principal

    def _check_request(
        self, decision: Decision, reason: str | None, duration: timedelta | None
    ) -> None:
        if decision.verdict is Verdict.DENY:
            raise PolicyDenied(main_reason(decision))
        if decision.require_reason and not (reason and reason.strip()):
            raise BadRequest(
                f"{decision.entitlement_id} requires a reason.",
                hint="Say why you need access (e.g. the ticket you are working on).",
            )
        if reason is not None and len(reason) > 1000:
            raise BadRequest("The reason is longer than 1,000 characters.")
        if duration is not None and not (timedelta(minutes=15) <= duration <= decision.max_grant):
            raise BadRequest(
                f"Duration {short_duration(duration)} is out of range for "
                f"{decision.entitlement_id}: between 15m and {short_duration(decision.max_grant)}."
            )

    def _new_grant(
        self,
        session: Session,
        principal: Principal,
        caller: Caller,
        decision: Decision,
        reason: str | None,
        duration: timedelta | None,
        meta: RequestMeta,
        now: datetime,
    ) -> Grant:
        """Create and audit a grant; raise GrantExists when the person already holds a live one.

        The database allows one live (active or pending) grant per person and entitlement. An
        active one past its expiry that the scheduler has not ended yet is ended here first; a
        concurrent request that created one a moment earlier surfaces as GrantExists too.
        """
        entitlement = decision.entitlement
        if entitlement is None:  # an allowed decision always names its entitlement
            raise PolicyDenied(main_reason(decision))
        self._end_stale_or_refuse(session, principal.id, decision.entitlement_id, caller, meta, now)
        length = duration or decision.max_grant
        pending = decision.verdict is Verdict.APPROVAL
        grant = Grant(
            principal_id=principal.id,
            entitlement_id=decision.entitlement_id,
            role_arn=entitlement.role_arn,
            status=GrantStatus.PENDING if pending else GrantStatus.ACTIVE,
            reason=reason,
            duration_seconds=int(length.total_seconds()),
            policy_version=self.policy.version,
            client=meta.client,
            created_at=now,
        )
        if not pending:
            self._activate(grant, caller.person, now)
        try:
            with session.begin_nested():  # a lost race rolls back to here, not the whole request
                session.add(grant)
        except IntegrityError:
            winner = self._live_grant(session, principal.id, decision.entitlement_id)
            if winner is None:
                raise
            log.info("grant race on %s lost to grant %s", decision.entitlement_id, winner.id)
            raise GrantExists(winner) from None
        self._record(
            session,
            self._ectx(caller.email, meta),
            NewEvent(
                "grant.request",
                target=decision.entitlement_id,
                decision="pending" if pending else "allow",
                reason=main_reason(decision),
                details={
                    "grant_id": grant.id,
                    "role_arn": grant.role_arn,
                    "status": grant.status,
                    "duration_seconds": grant.duration_seconds,
                    "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
                    "request_reason": reason,
                },
            ),
        )
        return grant

    def _end_stale_or_refuse(
        self,
        session: Session,
        principal_id: str,
        entitlement_id: str,
        caller: Caller,
        meta: RequestMeta,
        now: datetime,
    ) -> None:
        """Make way for a new grant: end a live one past its expiry, refuse any other."""
        live = self._live_grant(session, principal_id, entitlement_id)
        if live is None:
            return
        if live.status == GrantStatus.ACTIVE and live.expires_at and live.expires_at <= now:
            reason = "past its expiry; ended before a new grant for the same entitlement"
            self._end(session, live, GrantStatus.EXPIRED, caller.email, reason, meta)
            session.flush()
            return
        raise GrantExists(live)

    def _live_grant(self, session: Session, principal_id: str, entitlement_id: str) -> Grant | None:
        """The person's live grant for the entitlement (at most one), locked for this request."""
        return session.scalars(
            select(Grant)
            .where(
                Grant.principal_id == principal_id,
                Grant.entitlement_id == entitlement_id,
                Grant.status.in_(LIVE),
            )
            .with_for_update(of=Grant)
            .execution_options(populate_existing=True)
        ).first()

    def _end(
        self,
        session: Session,
        grant: Grant,
        status: GrantStatus,
        actor: str,
        reason: str | None,
        meta: RequestMeta | None,
    ) -> None:
        """End a grant, queue denies for its live sessions, audit it (see EndingMixin)."""
        raise NotImplementedError

    def _activate(self, grant: Grant, person: Person, now: datetime) -> None:
        expires = now + timedelta(seconds=grant.duration_seconds)
        if person.valid_until is not None:
            expires = min(expires, person.valid_until)
        grant.status = GrantStatus.ACTIVE
        grant.starts_at = now
        grant.expires_at = expires

    def _active_grant(
        self, session: Session, principal_id: str, entitlement_id: str, now: datetime
    ) -> Grant | None:
        params = {"principal": principal_id, "entitlement": entitlement_id, "now": now}
        return session.scalars(_active_grant_query(), params).first()

    def _lock_grant(self, session: Session, grant_id: str) -> Grant:
        grant = session.get(Grant, grant_id, with_for_update=True)
        if grant is None:
            raise NotFound(f"No grant {grant_id}.")
        return grant


@cache
def _active_grant_query() -> Select[Grant]:
    """The person's active grant for an entitlement (built once: every issuance asks)."""
    return (
        select(Grant)
        .where(
            Grant.principal_id == bindparam("principal"),
            Grant.entitlement_id == bindparam("entitlement"),
            Grant.status == GrantStatus.ACTIVE,
            Grant.expires_at > bindparam("now"),
        )
        .order_by(Grant.expires_at.desc())
        .limit(1)
    )
