"""GrantService: the one domain API for requesting, approving, issuing, revoking and expiring.

Every state change and its audit event commit in one transaction, so neither exists without the
other. Issuing credentials writes the decision's audit event *before* calling AWS: if that write
fails, AWS is never called (fail closed). Secrets returned by STS pass through and are never
stored, logged or audited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from broker.audit import AuditLog, EventContext, NewEvent
from broker.auth.principals import sync_principal
from broker.auth.tokens import revoke_for_principals
from broker.db import Database
from broker.errors import (
    AuditUnavailable,
    BadRequest,
    BrokerError,
    Conflict,
    Forbidden,
    NotFound,
    PolicyDenied,
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
    utcnow,
)
from broker.policy import Decision, Identity, Person, RequestContext, Verdict
from broker.policy_store import PolicySnapshot
from broker.sts import (
    AssumeRequest,
    IssuedCredentials,
    NetworkBinding,
    RoleLimits,
    StsIssuer,
    clamp_duration,
    role_session_name,
)

LIVE = (GrantStatus.PENDING, GrantStatus.ACTIVE)
log = logging.getLogger(__name__)
SESSION_TAG_GRANT = "broker-grant"
SESSION_TAG_KIND = "broker-kind"


class ApprovalRequired(PolicyDenied):
    """The entitlement needs an approved grant and the caller has none."""

    code = "approval_required"


@dataclass(frozen=True)
class RequestMeta:
    """Where a call came from; copied into audit events and session records."""

    client: str = "api"
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class Caller:
    """An authenticated person: their policy view and their principal row id."""

    person: Person
    principal_id: str

    @property
    def email(self) -> str:
        """The caller's email, used as the audit actor."""
        return self.person.identity.email


@dataclass(frozen=True)
class Issued:
    """Credentials handed to the caller once, with the session recorded for them."""

    credentials: IssuedCredentials
    session_id: str
    grant_id: str
    entitlement_id: str


class GrantService:
    """Request, approve, issue, revoke and expire grants under the policy in force."""

    def __init__(
        self,
        database: Database,
        policy: PolicySnapshot,
        issuer: StsIssuer,
        role_limits: RoleLimits,
        *,
        audit: AuditLog | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = database
        self.policy = policy
        self.issuer = issuer
        self.role_limits = role_limits
        self.audit = audit or AuditLog(clock)
        self.clock = clock

    # -- people -----------------------------------------------------------------------------

    def sign_in(self, identity: Identity, meta: RequestMeta) -> Caller:
        """Resolve an authenticated identity against the policy and record the principal."""
        person = self.policy.evaluator.resolve(identity)
        with self._tx() as session:
            principal = sync_principal(session, person, now=self.clock())
            if principal.disabled:
                raise Forbidden(
                    "Your access to the broker has been cut off by an administrator.",
                    hint="Contact your security team.",
                )
            return Caller(person, principal.id)

    def entitlements(self, caller: Caller, meta: RequestMeta) -> list[Decision]:
        """Every entitlement and the decision for this caller (allowed ones and why not)."""
        return self.policy.evaluator.decide_all(caller.person, self._ctx(meta))

    # -- grants -----------------------------------------------------------------------------

    def request_grant(
        self,
        caller: Caller,
        entitlement_id: str,
        *,
        reason: str | None,
        duration: timedelta | None,
        meta: RequestMeta,
    ) -> Grant:
        """Create a grant: active at once when the policy allows, pending when it needs approval."""
        now = self.clock()
        with self._denials_audited(caller, meta, "grant.request", entitlement_id):
            with self._tx() as session:
                principal = self._live_principal(session, caller)
                decision = self.policy.evaluator.decide(
                    caller.person, entitlement_id, self._ctx(meta)
                )
                self._check_request(decision, reason, duration)
                return self._new_grant(
                    session, principal, caller, decision, reason, duration, meta, now
                )

    def approve(
        self, approver: Caller, grant_id: str, *, comment: str | None, meta: RequestMeta
    ) -> Grant:
        """Approve a pending grant; never one's own, only as a named approver."""
        return self._decide_pending(approver, grant_id, comment, meta, approve=True)

    def deny(
        self, approver: Caller, grant_id: str, *, comment: str | None, meta: RequestMeta
    ) -> Grant:
        """Deny a pending grant."""
        return self._decide_pending(approver, grant_id, comment, meta, approve=False)

    def revoke(
        self, actor: Caller, grant_id: str, *, reason: str | None, meta: RequestMeta
    ) -> Grant:
        """End a grant early: its owner or an admin may; live sessions get a deny on AWS."""
        with self._tx() as session:
            grant = self._lock_grant(session, grant_id)
            if grant.principal_id != actor.principal_id and not self.policy.evaluator.is_admin(
                actor.person
            ):
                raise NotFound(f"No grant {grant_id} of yours.")
            if grant.status not in LIVE:
                raise Conflict(f"Grant {grant_id} is already {grant.status}.")
            self._end(session, grant, GrantStatus.REVOKED, actor.email, reason, meta)
            return grant

    def cut_off(self, admin: Caller, principal_id: str, *, reason: str, meta: RequestMeta) -> int:
        """Kill switch: disable a person, end all their grants, revoke their tokens and sessions."""
        if not self.policy.evaluator.is_admin(admin.person):
            raise Forbidden("Only broker admins may cut a person off.")
        with self._tx() as session:
            principal = session.get(Principal, principal_id, with_for_update=True)
            if principal is None:
                raise NotFound(f"No person {principal_id}.")
            principal.disabled = True
            principal.disabled_reason = reason
            now = self.clock()
            grants = session.scalars(
                select(Grant)
                .where(Grant.principal_id == principal_id, Grant.status.in_(LIVE))
                .with_for_update()
            ).all()
            for grant in grants:
                self._end(session, grant, GrantStatus.REVOKED, admin.email, reason, meta)
            revoke_for_principals(session, [principal_id], now=now)
            self._person_revocations(session, principal, cutoff=now)
            self._record(
                session,
                self._ectx(admin.email, meta),
                NewEvent(
                    "principal.cut_off",
                    target=principal.email,
                    decision="revoke",
                    reason=reason,
                    details={"grants_revoked": len(grants)},
                ),
            )
            return len(grants)

    def restore(self, admin: Caller, principal_id: str, *, meta: RequestMeta) -> None:
        """Re-enable a person who was cut off."""
        if not self.policy.evaluator.is_admin(admin.person):
            raise Forbidden("Only broker admins may re-enable a person.")
        with self._tx() as session:
            principal = session.get(Principal, principal_id, with_for_update=True)
            if principal is None:
                raise NotFound(f"No person {principal_id}.")
            principal.disabled = False
            principal.disabled_reason = None
            self._record(
                session,
                self._ectx(admin.email, meta),
                NewEvent("principal.restore", target=principal.email, decision="allow"),
            )

    def list_grants(self, caller: Caller, *, include_ended: bool = False) -> list[Grant]:
        """The caller's grants, newest first."""
        with self.db.read_session() as session:
            query = select(Grant).where(Grant.principal_id == caller.principal_id)
            if not include_ended:
                query = query.where(Grant.status.in_(LIVE))
            return list(session.scalars(query.order_by(Grant.created_at.desc())).all())

    def pending_for_approver(self, approver: Caller) -> list[Grant]:
        """Pending grants this person may decide (never their own)."""
        with self.db.read_session() as session:
            rows = session.scalars(
                select(Grant).where(Grant.status == GrantStatus.PENDING).order_by(Grant.created_at)
            ).all()
        return [
            g
            for g in rows
            if g.principal_id != approver.principal_id
            and self.policy.evaluator.can_approve(approver.person, g.entitlement_id)
        ]

    # -- credentials ------------------------------------------------------------------------

    def issue(
        self,
        caller: Caller,
        entitlement_id: str,
        *,
        duration: timedelta | None,
        meta: RequestMeta,
        reason: str | None = None,
    ) -> Issued:
        """Issue credentials under the caller's active grant (creating one if auto-approved)."""
        request, grant_id, ectx = self._prepare_issue(
            caller, entitlement_id, duration, reason, meta
        )
        try:
            credentials = self.issuer.assume(request)
        except BrokerError as exc:
            self._best_effort_record(
                ectx,
                NewEvent(
                    "credentials.failed",
                    target=request.role_arn,
                    decision="error",
                    reason=exc.message,
                    details={"grant_id": grant_id, "role_session_name": request.role_session_name},
                ),
            )
            raise
        return self._record_issue(caller, entitlement_id, grant_id, credentials, meta, ectx)

    def _prepare_issue(
        self,
        caller: Caller,
        entitlement_id: str,
        duration: timedelta | None,
        reason: str | None,
        meta: RequestMeta,
    ) -> tuple[AssumeRequest, str, EventContext]:
        with self._denials_audited(caller, meta, "credentials.issue", entitlement_id):
            return self._prepare_issue_tx(caller, entitlement_id, duration, reason, meta)

    def _prepare_issue_tx(
        self,
        caller: Caller,
        entitlement_id: str,
        duration: timedelta | None,
        reason: str | None,
        meta: RequestMeta,
    ) -> tuple[AssumeRequest, str, EventContext]:
        now = self.clock()
        ectx = self._ectx(caller.email, meta)
        with self._tx() as session:
            principal = self._live_principal(session, caller)
            decision = self.policy.evaluator.decide(caller.person, entitlement_id, self._ctx(meta))
            if decision.verdict is Verdict.DENY:
                raise PolicyDenied(_reason(decision))
            grant = self._active_grant(session, principal.id, entitlement_id, now)
            if grant is None:
                if decision.verdict is Verdict.APPROVAL:
                    raise ApprovalRequired(
                        f"{entitlement_id} needs an approved grant and you have none active.",
                        hint="Request access first; an approver must approve it.",
                    )
                self._check_request(decision, reason, None)
                grant = self._new_grant(
                    session, principal, caller, decision, reason, None, meta, now
                )
            entitlement = decision.entitlement
            if entitlement is None:  # an allowed decision always names its entitlement
                raise PolicyDenied(_reason(decision))
            seconds = clamp_duration(
                requested=int(duration.total_seconds()) if duration else None,
                entitlement_max=int(decision.max_duration.total_seconds()),
                role_max=self.role_limits.max_session_duration(entitlement.role_arn),
                grant_expires_at=grant.expires_at,
                valid_until=caller.person.valid_until,
                now=now,
            )
            network = entitlement.network
            request = AssumeRequest(
                role_arn=entitlement.role_arn,
                role_session_name=role_session_name(grant.id),
                source_identity=principal.source_identity,
                duration_seconds=seconds,
                tags={SESSION_TAG_GRANT: grant.id, SESSION_TAG_KIND: caller.person.kind},
                session_policy=entitlement.session_policy,
                managed_policy_arns=tuple(entitlement.managed_policy_arns),
                network=NetworkBinding(tuple(network.source_ip), tuple(network.source_vpc))
                if network
                else None,
            )
            self.issuer.check(request)
            self._record(
                session,
                ectx,
                NewEvent(
                    "credentials.issue",
                    target=entitlement.role_arn,
                    decision="allow",
                    reason=_reason(decision),
                    details={
                        "entitlement": entitlement_id,
                        "grant_id": grant.id,
                        "role_session_name": request.role_session_name,
                        "source_identity": request.source_identity,
                        "duration_seconds": seconds,
                    },
                ),
            )
            return request, grant.id, ectx

    def _record_issue(
        self,
        caller: Caller,
        entitlement_id: str,
        grant_id: str,
        credentials: IssuedCredentials,
        meta: RequestMeta,
        ectx: EventContext,
    ) -> Issued:
        now = self.clock()
        with self._tx() as session:
            row = IssuedSession(
                grant_id=grant_id,
                principal_id=caller.principal_id,
                role_arn=_role_arn(credentials.assumed_role_arn, session, grant_id),
                role_session_name=credentials.role_session_name,
                source_identity=credentials.source_identity,
                access_key_id=credentials.access_key_id,
                assumed_role_arn=credentials.assumed_role_arn,
                issued_at=now,
                expires_at=credentials.expiration,
                client=meta.client,
                source_ip=meta.ip,
                user_agent=(meta.user_agent or None) and meta.user_agent[:512],
            )
            session.add(row)
            session.flush()
            self._record(
                session,
                ectx,
                NewEvent(
                    "credentials.issued",
                    target=credentials.assumed_role_arn,
                    decision="allow",
                    details={
                        "entitlement": entitlement_id,
                        "grant_id": grant_id,
                        "session_id": row.id,
                        "access_key_id": credentials.access_key_id,
                        "role_session_name": credentials.role_session_name,
                        "source_identity": credentials.source_identity,
                        "expires_at": credentials.expiration.isoformat(),
                    },
                ),
            )
            return Issued(credentials, row.id, grant_id, entitlement_id)

    # -- the scheduler's side ---------------------------------------------------------------

    def expire_due(self, *, limit: int = 500) -> list[str]:
        """End active grants past `expires_at` and lapse stale pending ones; return their ids.

        Rows are claimed with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so several schedulers
        never end the same grant twice.
        """
        now = self.clock()
        ended: list[str] = []
        with self._tx() as session:
            query = (
                select(Grant)
                .where(Grant.status == GrantStatus.ACTIVE, Grant.expires_at <= now)
                .order_by(Grant.expires_at)
                .limit(limit)
            )
            grants = session.scalars(_skip_locked(query, self.db)).unique().all()
            known = _Prefetched.load(session, grants, cutoff=now)
            for grant in grants:
                self._end(
                    session, grant, GrantStatus.EXPIRED, "scheduler", "grant ended", None, known
                )
                ended.append(grant.id)
        return ended

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
        anything a crash or a manual database change left behind. Returns the new revocation
        ids. On PostgreSQL one scheduler reconciles at a time (advisory lock), others skip.
        """
        now = self.clock()
        queued: list[str] = []
        with self._tx() as session:
            if not try_xact_lock(session, "broker:reconcile"):
                return []
            rows = session.execute(
                select(IssuedSession, Grant)
                .join(Grant, Grant.id == IssuedSession.grant_id)
                .where(IssuedSession.expires_at > now, Grant.status != GrantStatus.ACTIVE)
            ).all()
            if not rows:
                return []
            roles = {s.role_arn for s, _ in rows}
            live = session.scalars(
                select(Revocation).where(
                    Revocation.role_arn.in_(roles), Revocation.status != RevocationStatus.DROPPED
                )
            ).all()
            uncovered: dict[str, tuple[Grant, int]] = {}
            for sess, grant in rows:
                if not any(_covers(r, sess) for r in live):
                    count = uncovered.get(grant.id, (grant, 0))[1]
                    uncovered[grant.id] = (grant, count + 1)
            for grant, sessions in uncovered.values():
                revocations = self._grant_revocations(session, grant, cutoff=now)
                queued.extend(r.id for r in revocations)
                self._record(
                    session,
                    self._ectx("scheduler", None),
                    NewEvent(
                        "revocation.queued",
                        target=grant.role_arn,
                        decision="revoke",
                        reason=f"reconcile: {sessions} live session(s) of {grant.status} grant "
                        "had no deny",
                        details={
                            "grant_id": grant.id,
                            "person": grant.principal.email,
                            "revocations": [r.id for r in revocations],
                        },
                    ),
                )
        return queued

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

    # -- internals --------------------------------------------------------------------------

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

    def _best_effort_record(self, ectx: EventContext, event: NewEvent) -> None:
        try:
            with self._tx() as session:
                self._record(session, ectx, event)
        except AuditUnavailable:
            pass  # the original error is what the caller needs to see

    @contextmanager
    def _denials_audited(
        self, caller: Caller, meta: RequestMeta, action: str, entitlement_id: str
    ) -> Iterator[None]:
        """Audit a refusal after the refused transaction has rolled back (never inside it)."""
        try:
            yield
        except AuditUnavailable:
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
            raise PolicyDenied(_reason(decision))
        if decision.require_reason and not (reason and reason.strip()):
            raise BadRequest(
                f"{decision.entitlement_id} requires a reason.",
                hint="Say why you need access (e.g. the ticket you are working on).",
            )
        if reason is not None and len(reason) > 1000:
            raise BadRequest("The reason is longer than 1,000 characters.")
        if duration is not None and not (timedelta(minutes=15) <= duration <= decision.max_grant):
            raise BadRequest(
                f"Duration {_fmt(duration)} is out of range for {decision.entitlement_id}: "
                f"between 15m and {_fmt(decision.max_grant)}."
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
        entitlement = decision.entitlement
        if entitlement is None:  # an allowed decision always names its entitlement
            raise PolicyDenied(_reason(decision))
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
        session.add(grant)
        session.flush()
        self._record(
            session,
            self._ectx(caller.email, meta),
            NewEvent(
                "grant.request",
                target=decision.entitlement_id,
                decision="pending" if pending else "allow",
                reason=_reason(decision),
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
        return session.scalars(
            select(Grant)
            .where(
                Grant.principal_id == principal_id,
                Grant.entitlement_id == entitlement_id,
                Grant.status == GrantStatus.ACTIVE,
                Grant.expires_at > now,
            )
            .order_by(Grant.expires_at.desc())
            .limit(1)
        ).first()

    def _lock_grant(self, session: Session, grant_id: str) -> Grant:
        grant = session.get(Grant, grant_id, with_for_update=True)
        if grant is None:
            raise NotFound(f"No grant {grant_id}.")
        return grant

    def _decide_pending(
        self,
        approver: Caller,
        grant_id: str,
        comment: str | None,
        meta: RequestMeta,
        *,
        approve: bool,
    ) -> Grant:
        now = self.clock()
        with self._tx() as session:
            grant = self._lock_grant(session, grant_id)
            if grant.principal_id == approver.principal_id:
                raise Forbidden("You cannot approve or deny your own request.")
            if not self.policy.evaluator.can_approve(approver.person, grant.entitlement_id):
                raise Forbidden(f"You are not an approver for {grant.entitlement_id}.")
            if grant.status != GrantStatus.PENDING:
                raise Conflict(f"Grant {grant_id} is {grant.status}, not pending.")
            grant.decided_at = now
            grant.decided_by = approver.email
            grant.decision_comment = comment
            if approve:
                requester = self._requester(session, grant)
                self._activate(grant, requester, now)
            else:
                grant.status = GrantStatus.DENIED
                grant.ended_at = now
            self._record(
                session,
                self._ectx(approver.email, meta),
                NewEvent(
                    "grant.approve" if approve else "grant.deny",
                    target=grant.entitlement_id,
                    decision="allow" if approve else "deny",
                    reason=comment,
                    details={"grant_id": grant.id, "requester": grant.principal.email},
                ),
            )
            return grant

    def _requester(self, session: Session, grant: Grant) -> Person:
        """The requester as the policy sees them now (their end date still caps the grant)."""
        principal = grant.principal
        if principal.disabled:
            raise Conflict("The requester has been cut off; the request cannot be approved.")
        identity = Identity(
            issuer=principal.issuer,
            subject=principal.subject,
            email=principal.email,
            groups=frozenset(principal.groups or []),
        )
        return self.policy.evaluator.resolve(identity)

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
        session.add(revocation)
        session.flush()
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
    def load(cls, session: Session, grants: Sequence[Grant], *, cutoff: datetime) -> _Prefetched:
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

    def others_active(self, grant: Grant) -> int:
        """Active grants of this person on this role besides ``grant``, which is ending now."""
        key = (grant.principal_id, grant.role_arn)
        remaining = max(self.active.get(key, 0) - 1, 0)
        self.active[key] = remaining
        return remaining


def _skip_locked(query: Any, database: Database) -> Any:
    if database.dialect == "postgresql":
        # Lock only the grant rows: a principal's other grants stay claimable by other nodes.
        return query.with_for_update(skip_locked=True, of=Grant)
    return query  # SQLite: BEGIN IMMEDIATE already makes this transaction the only writer


def _covers(revocation: Revocation, session: IssuedSession) -> bool:
    """Whether a live revocation row denies this session until it expires."""
    if revocation.drop_after < session.expires_at:
        return False
    if revocation.scope == "grant":
        return revocation.grant_id == session.grant_id
    if revocation.scope == "person" and revocation.source_identity != session.source_identity:
        return False
    return revocation.cutoff >= session.issued_at


def _role_arn(assumed_role_arn: str, session: Session, grant_id: str) -> str:
    grant = session.get(Grant, grant_id)
    return grant.role_arn if grant is not None else assumed_role_arn


def _reason(decision: Decision) -> str:
    return decision.reasons[0] if decision.reasons else decision.verdict.value


def _fmt(delta: timedelta) -> str:
    minutes = int(delta.total_seconds()) // 60
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def grant_summary(grants: Sequence[Grant]) -> list[dict[str, Any]]:
    """JSON-ready views of grants (for the API and pages)."""
    return [
        {
            "id": g.id,
            "entitlement": g.entitlement_id,
            "role_arn": g.role_arn,
            "status": g.status,
            "reason": g.reason,
            "created_at": g.created_at.isoformat(),
            "expires_at": g.expires_at.isoformat() if g.expires_at else None,
            "decided_by": g.decided_by,
        }
        for g in grants
    ]
