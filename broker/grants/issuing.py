"""Issuing credentials under a grant: audit first, AssumeRole, record; secrets never kept.

Every AssumeRole has a deny for its session in standby before AWS is called, armed whenever
the session cannot be accounted for (see :mod:`broker.grants.lost`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from broker import ratelimit
from broker.audit import EventContext, NewEvent
from broker.errors import (
    AuditUnavailable,
    BrokerError,
    PolicyDenied,
)
from broker.grants.core import GrantCore
from broker.grants.lost import (
    IN_FLIGHT_MAX,
    SessionNotRecorded,
    arm,
    lost_session_event,
    standby_deny,
)
from broker.grants.types import (
    SESSION_TAG_GRANT,
    SESSION_TAG_KIND,
    ApprovalRequired,
    Caller,
    GrantExists,
    Issued,
    RequestMeta,
    main_reason,
)
from broker.models import (
    GrantStatus,
    IssuedSession,
    Revocation,
    RevocationStatus,
)
from broker.policy import Verdict
from broker.ratelimit import RateLimit
from broker.sts import (
    AssumeRequest,
    AwsOutcomeUnknown,
    IssuedCredentials,
    NetworkBinding,
    clamp_duration,
    role_session_name,
)
from broker.wakeup import notify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Attempt:
    """One AssumeRole about to be made: the request, its grant, its standby deny, its audit."""

    request: AssumeRequest
    grant_id: str
    grant_role_arn: str
    principal_id: str
    entitlement_id: str
    standby_id: str
    ectx: EventContext


class IssuingMixin(GrantCore):
    """Issuing credentials: decide and audit first, then AssumeRole, then record the session.

    Two transactions per issuance, both short and with no network call inside: one before
    AssumeRole (rate limit, grant, standby deny, ``credentials.issue``) and one after (session
    row, ``credentials.issued``). The policy decision and the role's session limit (IAM, cached)
    are worked out before the first.
    """

    def issue(
        self,
        caller: Caller,
        entitlement_id: str,
        *,
        duration: timedelta | None,
        meta: RequestMeta,
        reason: str | None = None,
        limit: RateLimit | None = None,
    ) -> Issued:
        """Issue credentials under the caller's active grant (creating one if auto-approved).

        ``limit`` is counted in the first transaction; past it, RateLimited and nothing done.
        """
        attempt = self._prepare_issue(caller, entitlement_id, duration, reason, meta, limit)
        request = attempt.request
        try:
            credentials = self.issuer.assume(request)
        except AwsOutcomeUnknown as exc:
            self._cover_lost_session(attempt, "credentials.outcome_unknown", exc.message)
            raise
        except BrokerError as exc:  # AWS answered with an error, or nothing was sent
            self._issue_failed(attempt, exc)
            raise
        except Exception as exc:  # an answer the client could not read: AWS may have acted
            reason = f"AssumeRole failed inside the broker ({type(exc).__name__})"
            self._cover_lost_session(attempt, "credentials.outcome_unknown", reason)
            raise
        return self._record_issue(caller, attempt, credentials, meta)

    def _prepare_issue(
        self,
        caller: Caller,
        entitlement_id: str,
        duration: timedelta | None,
        reason: str | None,
        meta: RequestMeta,
        limit: RateLimit | None,
    ) -> _Attempt:
        audited = self._denials_audited(caller, meta, "credentials.issue", entitlement_id, limit)
        with audited:
            return self._prepare_issue_tx(caller, entitlement_id, duration, reason, meta, limit)

    def _prepare_issue_tx(
        self,
        caller: Caller,
        entitlement_id: str,
        duration: timedelta | None,
        reason: str | None,
        meta: RequestMeta,
        limit: RateLimit | None,
    ) -> _Attempt:
        now = self.clock()
        ectx = self._ectx(caller.email, meta)
        # Outside the transaction: the decision is pure, and the role's limit may ask IAM.
        decision = self.policy.evaluator.decide(caller.person, entitlement_id, self._ctx(meta))
        if decision.verdict is Verdict.DENY:
            raise PolicyDenied(main_reason(decision))
        entitlement = decision.entitlement
        if entitlement is None:  # an allowed decision always names its entitlement
            raise PolicyDenied(main_reason(decision))
        role_max = self.role_limits.max_session_duration(entitlement.role_arn)
        with self._tx() as session:
            # The grant query joins the principal, so the check below asks nothing more.
            grant = self._active_grant(session, caller.principal_id, entitlement_id, now)
            principal = self._live_principal(session, caller)
            if grant is None:
                if decision.verdict is Verdict.APPROVAL:
                    raise ApprovalRequired(
                        f"{entitlement_id} needs an approved grant and you have none active.",
                        hint="Request access first; an approver must approve it.",
                    )
                self._check_request(decision, reason, None)
                try:
                    grant = self._new_grant(
                        session, principal, caller, decision, reason, None, meta, now
                    )
                except GrantExists as exc:  # a parallel request created it first: use it
                    if exc.grant.status != GrantStatus.ACTIVE:
                        raise
                    grant = exc.grant
            seconds = clamp_duration(
                requested=int(duration.total_seconds()) if duration else None,
                entitlement_max=int(decision.max_duration.total_seconds()),
                role_max=role_max,
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
            standby = standby_deny(request, grant_id=grant.id, principal_id=principal.id, now=now)
            session.add(standby)
            if limit is not None:
                # Last but the audit event: the person's counter row stays locked until the
                # commit, so concurrent issuances of one person queue here only briefly.
                ratelimit.check(session, limit)
            self._record(
                session,
                ectx,
                NewEvent(
                    "credentials.issue",
                    target=entitlement.role_arn,
                    decision="allow",
                    reason=main_reason(decision),
                    details={
                        "entitlement": entitlement_id,
                        "grant_id": grant.id,
                        "role_session_name": request.role_session_name,
                        "source_identity": request.source_identity,
                        "duration_seconds": seconds,
                    },
                ),
            )
            return _Attempt(
                request, grant.id, grant.role_arn, principal.id, entitlement_id, standby.id, ectx
            )

    def _record_issue(
        self,
        caller: Caller,
        attempt: _Attempt,
        credentials: IssuedCredentials,
        meta: RequestMeta,
    ) -> Issued:
        """Record the session and retire its standby deny; withhold what cannot be recorded."""
        try:
            with self._tx() as session:
                if self._retire_standby(session, attempt.standby_id):
                    return self._record_session(session, caller, attempt, credentials, meta)
                standby = self._standby(session, attempt.standby_id)
                if standby is None:  # never expected: nothing could have armed it
                    return self._record_session(session, caller, attempt, credentials, meta)
                # The scheduler gave this issuance up and armed its deny: the session is denied,
                # so its credentials are useless; make sure the deny outlives them.
                arm(standby, self.clock(), expires_at=credentials.expiration)
                notify(session)
                reason = (
                    f"AWS answered after the broker had given this issuance up (over "
                    f"{IN_FLIGHT_MAX}); the credentials were withheld and the session stays denied"
                )
                self._record(
                    session,
                    attempt.ectx,
                    lost_session_event("credentials.unrecorded", standby, reason),
                )
        except AuditUnavailable:
            return self._recover_unrecorded(attempt, credentials)
        raise SessionNotRecorded(
            f"AWS answered too late to assume {attempt.request.role_arn}: the credentials were "
            "withheld and that session is denied.",
            hint="Ask again: a new request makes a new session.",
        )

    def _record_session(
        self,
        session: Session,
        caller: Caller,
        attempt: _Attempt,
        credentials: IssuedCredentials,
        meta: RequestMeta,
    ) -> Issued:
        grant_id = attempt.grant_id
        row = IssuedSession(
            grant_id=grant_id,
            principal_id=caller.principal_id,
            role_arn=attempt.grant_role_arn,
            role_session_name=credentials.role_session_name,
            source_identity=credentials.source_identity,
            access_key_id=credentials.access_key_id,
            assumed_role_arn=credentials.assumed_role_arn,
            issued_at=self.clock(),
            expires_at=credentials.expiration,
            client=meta.client,
            source_ip=meta.ip,
            user_agent=(meta.user_agent or None) and meta.user_agent[:512],
        )
        session.add(row)
        session.flush()
        self._record(
            session,
            attempt.ectx,
            NewEvent(
                "credentials.issued",
                target=credentials.assumed_role_arn,
                decision="allow",
                details={
                    "entitlement": attempt.entitlement_id,
                    "grant_id": grant_id,
                    "session_id": row.id,
                    "access_key_id": credentials.access_key_id,
                    "role_session_name": credentials.role_session_name,
                    "source_identity": credentials.source_identity,
                    "expires_at": credentials.expiration.isoformat(),
                },
            ),
        )
        return Issued(credentials, row.id, grant_id, attempt.entitlement_id)

    def _recover_unrecorded(self, attempt: _Attempt, credentials: IssuedCredentials) -> Issued:
        """The record transaction failed after AWS answered: arm the deny, withhold the keys.

        Unless the record did commit and only its acknowledgement was lost: then it stands.
        """
        name = attempt.request.role_session_name
        try:
            with self._tx() as session:
                recorded = session.scalars(
                    select(IssuedSession).where(IssuedSession.role_session_name == name)
                ).first()
                if recorded is not None:
                    return Issued(
                        credentials, recorded.id, attempt.grant_id, attempt.entitlement_id
                    )
                self._arm_standby(
                    session,
                    attempt,
                    "credentials.unrecorded",
                    "AWS issued the session but the broker could not record it; the credentials "
                    "were withheld",
                    expires_at=credentials.expiration,
                )
            where = "its deny is queued"
        except AuditUnavailable:
            log.error(
                "session %s on %s could not be recorded nor its deny armed; the scheduler arms "
                "it once the database answers",
                name,
                attempt.request.role_arn,
            )
            where = "it will be denied as soon as the broker's database answers"
        raise SessionNotRecorded(
            f"AWS issued credentials for {attempt.request.role_arn} but the broker could not "
            f"record the session, so they were withheld and {where}.",
            hint="Ask again in a moment: a new request makes a new session.",
        )

    def _cover_lost_session(self, attempt: _Attempt, action: str, reason: str) -> None:
        """Arm the standby deny of a session AWS may have made, and audit it, at once."""
        try:
            with self._tx() as session:
                self._arm_standby(session, attempt, action, reason)
        except AuditUnavailable:
            log.error(
                "could not arm the deny for session %s on %s; the scheduler arms it once the "
                "database answers",
                attempt.request.role_session_name,
                attempt.request.role_arn,
            )

    def _arm_standby(
        self,
        session: Session,
        attempt: _Attempt,
        action: str,
        reason: str,
        *,
        expires_at: datetime | None = None,
    ) -> None:
        now = self.clock()
        row = self._standby(session, attempt.standby_id)
        if row is None:  # never expected: rebuild it rather than leave the session uncovered
            row = standby_deny(
                attempt.request,
                grant_id=attempt.grant_id,
                principal_id=attempt.principal_id,
                now=now,
            )
            session.add(row)
        arm(row, now, expires_at=expires_at)
        notify(session)  # the deny of a session AWS may have made goes out at once
        self._record(session, attempt.ectx, lost_session_event(action, row, reason))

    def _issue_failed(self, attempt: _Attempt, exc: BrokerError) -> None:
        """AWS made no session: retire the standby deny and audit the failure."""
        request = attempt.request
        try:
            with self._tx() as session:
                standby = self._standby(session, attempt.standby_id)
                if standby is not None and standby.status == RevocationStatus.STANDBY:
                    session.delete(standby)
                self._record(
                    session,
                    attempt.ectx,
                    NewEvent(
                        "credentials.failed",
                        target=request.role_arn,
                        decision="error",
                        reason=exc.message,
                        details={
                            "grant_id": attempt.grant_id,
                            "role_session_name": request.role_session_name,
                        },
                    ),
                )
        except AuditUnavailable:
            pass  # the original error is what the caller needs to see; the scheduler tidies up

    @staticmethod
    def _standby(session: Session, standby_id: str) -> Revocation | None:
        return session.get(Revocation, standby_id, with_for_update=True, populate_existing=True)

    @staticmethod
    def _retire_standby(session: Session, standby_id: str) -> bool:
        """Delete the standby deny if it is still in standby (one statement); True if deleted.

        False means the scheduler armed it meanwhile (or it is gone): the caller looks closer.
        """
        deleted = session.execute(_retire_standby_statement(), {"id": standby_id}).first()
        return deleted is not None


@cache
def _retire_standby_statement() -> Any:
    """Delete a standby deny still in standby, saying whether it did (built once)."""
    return (
        delete(Revocation)
        .where(Revocation.id == bindparam("id"), Revocation.status == RevocationStatus.STANDBY)
        .returning(Revocation.id)
        .execution_options(synchronize_session=False)
    )
