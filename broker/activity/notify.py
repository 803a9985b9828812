"""What is worth telling people, put in the notification outbox by the scheduler.

The producer reads the audit trail past its cursor (``activity_cursors`` row ``notify:audit``):

- ``grant.request`` pending approval: ``approval_requested`` (link to the approvals page), mailed
  to the entitlement's approvers;
- ``grant.approve`` / ``grant.deny``: ``request_decided``, mailed to the requester;
- ``detection.fired`` (rules with ``notify: true``): ``detection``, mailed to BROKER_NOTIFY_EMAILS;
- ``revocation.failed``: ``revocation_failing``, mailed to BROKER_NOTIFY_EMAILS;

and active grants ending within BROKER_NOTIFY_ENDING_SOON_MINUTES (``grant_ending``, to their
owner). Requests never wait for any of it: they only write the audit events they always wrote.
Each message is queued once per channel (a unique ``dedupe_key``), whichever scheduler sees the
event first; one producer runs at a time (an advisory lock on PostgreSQL).

Messages are built from named fields only (people, entitlements, roles, grant ids, times, rule
reasons); :func:`scrub` also blanks anything shaped like an AWS secret key or session token in
free text, so no credential reaches a webhook or an inbox.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from broker.auth.identity import identity_of
from broker.db import Database
from broker.locks import try_xact_lock
from broker.models import (
    ActivityCursor,
    AuditEvent,
    AuditHead,
    Grant,
    GrantStatus,
    Notification,
    Principal,
    new_id,
)
from broker.policy import Evaluator

EVENTS = (
    "approval_requested",
    "request_decided",
    "grant_ending",
    "detection",
    "revocation_failing",
)
CURSOR = "notify:audit"
WATCHED = ("grant.request", "grant.approve", "grant.deny", "detection.fired", "revocation.failed")
BATCH = 500
_SECRETISH = re.compile(
    r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"  # an AWS secret access key
    r"|[A-Za-z0-9/+=]{100,}"  # a session token
)


def scrub(text: str) -> str:
    """Free text with anything shaped like a secret access key or session token blanked."""
    return _SECRETISH.sub("[redacted]", text)


@dataclass(frozen=True)
class Message:
    """One thing to tell: a subject, a few lines, an optional link and the facts behind it."""

    event: str
    ref: str
    """What makes it unique for its event (a grant id, a detection id...)."""
    subject: str
    text: str
    link: str | None = None
    facts: Mapping[str, str] = field(default_factory=dict)
    emails: tuple[str, ...] = ()

    def payload(self, created_at: datetime) -> dict[str, Any]:
        """The stored (and sent) form: strings only, secrets scrubbed."""
        return {
            "event": self.event,
            "subject": scrub(self.subject)[:200],
            "text": scrub(self.text)[:4000],
            "link": self.link,
            "facts": {k: scrub(str(v))[:500] for k, v in self.facts.items()},
            "created_at": created_at.isoformat(),
        }


@dataclass(frozen=True)
class Channels:
    """Which channels are configured: a webhook, e-mail, or both."""

    webhook: bool = False
    email: bool = False

    def __bool__(self) -> bool:
        return self.webhook or self.email


class NotificationProducer:
    """Turns audit events and grants about to end into outbox rows (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        channels: Channels,
        *,
        evaluator: Callable[[], Evaluator],
        clock: Callable[[], datetime],
        events: Sequence[str] = EVENTS,
        security_emails: Sequence[str] = (),
        base_url: str | None = None,
        ending_soon: timedelta = timedelta(minutes=15),
    ) -> None:
        self.db = database
        self.channels = channels
        self.evaluator = evaluator
        self.clock = clock
        self.events = frozenset(events)
        self.security_emails = tuple(security_emails)
        self.base_url = (base_url or "").rstrip("/") or None
        self.ending_soon = ending_soon

    def run(self) -> int:
        """Queue what happened since the last run; return how many messages were queued."""
        if not self.channels:
            return 0
        with self.db.session() as session:
            if not try_xact_lock(session, "broker:notify-producer"):
                return 0
            messages = self._from_audit(session)
            messages.extend(self._grants_ending(session))
            return self._queue(session, [m for m in messages if m.event in self.events])

    # -- reading -----------------------------------------------------------------------------

    def _from_audit(self, session: Session) -> list[Message]:
        cursor = session.get(ActivityCursor, CURSOR, with_for_update=True)
        head = session.scalar(select(AuditHead.seq)) or 0
        if cursor is None:  # first run: from now on, not the whole history
            session.add(ActivityCursor(name=CURSOR, position=str(head), updated_at=self.clock()))
            return []
        after = int(cursor.position)
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.seq > after, AuditEvent.action.in_(WATCHED))
            .order_by(AuditEvent.seq)
            .limit(BATCH)
        ).all()
        # Appends hold the chain head until they commit, so every seq up to the head is final.
        reached = rows[-1].seq if len(rows) == BATCH else max(head, after)
        cursor.position = str(reached)
        cursor.updated_at = self.clock()
        messages: list[Message] = []
        for event in rows:
            built = self._message(session, event)
            if built is not None:
                messages.append(built)
        return messages

    def _message(self, session: Session, event: AuditEvent) -> Message | None:
        details = dict(event.details or {})
        if event.action == "grant.request" and event.decision == "pending":
            return self._approval_requested(session, event, details)
        if event.action in ("grant.approve", "grant.deny"):
            return self._request_decided(session, event, details)
        if event.action == "detection.fired" and details.get("notify", True):
            return _detection(event, details, self.security_emails, self._link("/activity"))
        if event.action == "revocation.failed":
            return _revocation_failing(event, details, self.security_emails)
        return None

    def _approval_requested(
        self, session: Session, event: AuditEvent, details: Mapping[str, Any]
    ) -> Message:
        entitlement = str(event.target or "")
        seconds = int(details.get("duration_seconds") or 0)
        reason = str(details.get("request_reason") or "")
        text = f"{event.actor} asks for {entitlement} for {_minutes(seconds)}."
        if reason:
            text += f"\nReason: {reason}"
        link = self._link("/approvals")
        if link:
            text += f"\nApprove or deny: {link}"
        return Message(
            "approval_requested",
            str(details.get("grant_id") or event.seq),
            f"Approval requested: {entitlement} for {event.actor}",
            text,
            link,
            {
                "requester": event.actor,
                "entitlement": entitlement,
                "role_arn": str(details.get("role_arn") or ""),
                "grant_id": str(details.get("grant_id") or ""),
                "reason": reason,
            },
            self._approvers(session, entitlement, requester=event.actor),
        )

    def _request_decided(
        self, session: Session, event: AuditEvent, details: Mapping[str, Any]
    ) -> Message:
        verdict = "approved" if event.action == "grant.approve" else "denied"
        requester = str(details.get("requester") or "")
        entitlement = str(event.target or "")
        text = f"{event.actor} {verdict} {requester}'s request for {entitlement}."
        if event.reason:
            text += f"\nComment: {event.reason}"
        link = self._link("/")
        return Message(
            "request_decided",
            str(details.get("grant_id") or event.seq),
            f"Request {verdict}: {entitlement}",
            text,
            link,
            {
                "decision": verdict,
                "approver": event.actor,
                "requester": requester,
                "entitlement": entitlement,
                "grant_id": str(details.get("grant_id") or ""),
            },
            (requester,) if requester else (),
        )

    def _grants_ending(self, session: Session) -> list[Message]:
        now = self.clock()
        window = self.ending_soon
        grants = session.scalars(
            select(Grant).where(
                Grant.status == GrantStatus.ACTIVE,
                Grant.expires_at > now,
                Grant.expires_at <= now + window,
            )
        ).all()
        messages = []
        for grant in grants:
            if grant.expires_at is None or grant.starts_at is None:
                continue
            if grant.expires_at - grant.starts_at <= window:
                continue  # a grant shorter than the warning would be "ending" from its start
            left = int((grant.expires_at - now).total_seconds())
            link = self._link("/")
            messages.append(
                Message(
                    "grant_ending",
                    grant.id,
                    f"Grant ending soon: {grant.entitlement_id}",
                    f"Your grant for {grant.entitlement_id} ends at "
                    f"{grant.expires_at:%Y-%m-%d %H:%M} UTC (in {_minutes(left)}). Sessions "
                    "issued under it stop working then; request it again if you still need it.",
                    link,
                    {
                        "person": grant.principal.email,
                        "entitlement": grant.entitlement_id,
                        "grant_id": grant.id,
                        "expires_at": grant.expires_at.isoformat(),
                    },
                    (grant.principal.email,),
                )
            )
        return messages

    def _approvers(self, session: Session, entitlement: str, *, requester: str) -> tuple[str, ...]:
        """E-mail addresses of the people the policy lets approve this entitlement."""
        evaluator = self.evaluator()
        found = set()
        for principal in session.scalars(select(Principal).where(Principal.disabled.is_(False))):
            if principal.email.lower() == requester.lower():
                continue
            identity = identity_of(principal.issuer, principal.subject, principal.claims, {})
            if evaluator.can_approve(evaluator.resolve(identity), entitlement):
                found.add(principal.email.lower())
        return tuple(sorted(found))

    def _link(self, path: str) -> str | None:
        return f"{self.base_url}{path}" if self.base_url else None

    # -- writing -----------------------------------------------------------------------------

    def _queue(self, session: Session, messages: Sequence[Message]) -> int:
        now = self.clock()
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        queued = 0
        for message in messages:
            payload = message.payload(now)
            targets: list[tuple[str, list[str]]] = []
            if self.channels.webhook:
                targets.append(("webhook", []))
            if self.channels.email and message.emails:
                targets.append(("email", sorted(set(message.emails))))
            for channel, recipients in targets:
                result = session.execute(
                    dialect.insert(Notification)
                    .values(
                        id=new_id(),
                        dedupe_key=f"{message.event}:{message.ref}:{channel}"[:255],
                        event=message.event,
                        channel=channel,
                        recipients=recipients,
                        payload=payload,
                        status="pending",
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["dedupe_key"])
                    .returning(Notification.id)
                )
                queued += len(result.all())
        return queued


def _detection(
    event: AuditEvent, details: Mapping[str, Any], emails: Sequence[str], link: str | None
) -> Message:
    rule = str(details.get("rule") or "")
    severity = str(details.get("severity") or "")
    person = str(details.get("person") or event.target or "")
    action = str(details.get("action") or "")
    outcome = str(details.get("outcome") or "")
    reasons = "; ".join(str(r) for r in details.get("reasons") or ())
    text = (
        f"{person}: {action} in {details.get('region') or '?'} "
        f"(account {details.get('account') or '?'}) matched {rule}: {reasons}.\n"
        f"Response: {details.get('response')} → {outcome}."
    )
    if link:
        text += f"\nActivity: {link}"
    return Message(
        "detection",
        str(details.get("detection_id") or event.seq),
        f"[{severity}] detection {rule}: {person} {action}",
        text,
        link,
        {
            "rule": rule,
            "severity": severity,
            "person": person,
            "action": action,
            "region": str(details.get("region") or ""),
            "source_ip": str(details.get("source_ip") or ""),
            "grant_id": str(details.get("grant_id") or ""),
            "entitlement": str(details.get("entitlement") or ""),
            "response": str(details.get("response") or ""),
            "outcome": outcome,
            "event_id": str(details.get("event_id") or ""),
        },
        tuple(emails),
    )


def _revocation_failing(
    event: AuditEvent, details: Mapping[str, Any], emails: Sequence[str]
) -> Message:
    pending = [str(p) for p in details.get("pending") or ()]
    role = str(event.target or "")
    return Message(
        "revocation_failing",
        f"{role}:{min(pending) if pending else event.seq}",
        f"Revocation failing on {role}",
        f"The deny for {len(pending)} revocation(s) could not be written to {role} "
        f"(attempt {details.get('attempts')}): {event.reason or 'no reason given'}. The broker "
        f"retries at {details.get('next_attempt_at') or 'the next pass'}; until it succeeds, "
        "the sessions it targets still work.",
        None,
        {
            "role_arn": role,
            "attempts": str(details.get("attempts") or ""),
            "error": str(event.reason or ""),
            "next_attempt_at": str(details.get("next_attempt_at") or ""),
        },
        tuple(emails),
    )


def _minutes(seconds: int) -> str:
    minutes = max(seconds, 0) // 60
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest:02d} min" if hours else f"{rest} min"


def outbox_counts(session: Session) -> list[tuple[str, str, str, int]]:
    """(event, channel, status, count) of the outbox, for metrics."""
    rows = session.execute(
        select(
            Notification.event, Notification.channel, Notification.status, func.count()
        ).group_by(Notification.event, Notification.channel, Notification.status)
    ).all()
    return [(str(e), str(c), str(s), int(n)) for e, c, s, n in rows]
