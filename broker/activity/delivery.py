"""Delivering the notification outbox: signed webhooks and STARTTLS mail, retried with backoff.

Rows are claimed (``sending`` until ``claimed_until``; ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL) and sent outside any transaction, so a slow receiver holds no lock. A failure waits
``2^attempts`` seconds (capped at BROKER_NOTIFY_RETRY_MAX_SECONDS) before the next try; after
BROKER_NOTIFY_MAX_ATTEMPTS the row is ``failed`` and ``notification.failed`` is audited. A
scheduler that dies mid-send leaves a claim that lapses and is sent again, so a receiver may
rarely see a message twice: ``X-Broker-Delivery`` (the row id) lets it tell.

Webhook requests carry ``X-Broker-Timestamp`` (Unix seconds) and ``X-Broker-Signature:
v1=<hex>``, the HMAC-SHA256 of ``"<timestamp>." + body`` under BROKER_NOTIFY_WEBHOOK_SECRET.
Errors kept or logged never include the webhook URL (a Slack URL is itself a secret).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Protocol

import requests
from sqlalchemy import or_, select, update

from broker.audit import AuditLog, EventContext, NewEvent
from broker.db import Database
from broker.models import Notification

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Broker-Signature"
TIMESTAMP_HEADER = "X-Broker-Timestamp"
DELIVERY_HEADER = "X-Broker-Delivery"
EVENT_HEADER = "X-Broker-Event"


class DeliveryError(Exception):
    """A message was not accepted; the text says why without naming secrets."""


class Channel(Protocol):
    """Somewhere a notification can be sent."""

    def send(self, notification: Notification) -> None:
        """Deliver or raise DeliveryError."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, *, now: float, tolerance: float = 300
) -> bool:
    """Receiver side: a valid signature over a body sent within ``tolerance`` seconds."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def slack_body(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack-compatible message (incoming webhook ``text`` plus blocks)."""
    lines = f"*{payload['subject']}*\n{payload['text']}"
    return {
        "text": f"{payload['subject']}\n{payload['text']}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": lines[:2900]}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"broker · {payload['event']}"}],
            },
        ],
    }


class WebhookChannel:
    """POSTs JSON (the broker's shape or Slack's), signed with HMAC-SHA256 and a timestamp."""

    def __init__(
        self,
        url: str,
        secret: str | None,
        *,
        shape: str = "json",
        timeout: float = 10.0,
        http: requests.Session | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.secret = secret
        self.shape = shape
        self.timeout = timeout
        self.http = http or requests.Session()
        self.now = now

    def send(self, notification: Notification) -> None:
        """POST the message; any answer but 2xx is a failure."""
        payload = dict(notification.payload)
        document = (
            slack_body(payload)
            if self.shape == "slack"
            else {
                "id": notification.id,
                **payload,
            }
        )
        body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        timestamp = int(self.now())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "broker-notify/1",
            TIMESTAMP_HEADER: str(timestamp),
            DELIVERY_HEADER: notification.id,
            EVENT_HEADER: notification.event,
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, body)
        try:
            answer = self.http.post(
                self.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise DeliveryError(f"webhook unreachable ({type(exc).__name__})") from None
        if not 200 <= answer.status_code < 300:
            raise DeliveryError(f"webhook answered HTTP {answer.status_code}")


class EmailChannel:
    """Sends plain-text mail through an SMTP relay, always over STARTTLS unless told not to."""

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = True,
        ca_file: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.starttls = starttls
        self.ca_file = ca_file
        self.timeout = timeout

    def send(self, notification: Notification) -> None:
        """Send one mail to the row's recipients."""
        payload = notification.payload
        message = EmailMessage()
        message["Subject"] = str(payload.get("subject", ""))
        message["From"] = self.sender
        message["To"] = ", ".join(notification.recipients)
        message["Message-ID"] = make_msgid(idstring=notification.id)
        message[DELIVERY_HEADER] = notification.id
        message[EVENT_HEADER] = notification.event
        body = str(payload.get("text", ""))
        facts = payload.get("facts") or {}
        if facts:
            body += "\n\n" + "\n".join(f"{k}: {v}" for k, v in sorted(facts.items()) if v)
        message.set_content(body + "\n")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if self.starttls:
                    if not smtp.has_extn("starttls"):
                        raise DeliveryError(
                            "the mail server does not offer STARTTLS; not sending in clear text"
                        )
                    smtp.starttls(context=ssl.create_default_context(cafile=self.ca_file))
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"mail not accepted ({type(exc).__name__}: {exc})"[:300]) from None


@dataclass
class DeliveryResult:
    """What one delivery pass did."""

    sent: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Deliverer:
    """Sends due outbox rows through their channels (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        channels: Mapping[str, Channel],
        *,
        clock: Callable[[], datetime],
        max_attempts: int = 8,
        retry_max: timedelta = timedelta(minutes=10),
        claim_for: timedelta = timedelta(minutes=2),
        policy_version: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.db = database
        self.channels = dict(channels)
        self.clock = clock
        self.max_attempts = max_attempts
        self.retry_max = retry_max
        self.claim_for = claim_for
        self.policy_version = policy_version
        self.audit = AuditLog(clock)

    def run(self, *, limit: int = 50) -> DeliveryResult:
        """Claim due rows, send them one by one, record each outcome."""
        result = DeliveryResult()
        for row in self._claim(limit):
            channel = self.channels.get(row.channel)
            try:
                if channel is None:
                    raise DeliveryError(f"channel {row.channel} is no longer configured")
                channel.send(row)
            except DeliveryError as exc:
                self._failed(row, str(exc), result)
            else:
                self._sent(row, result)
        return result

    def _claim(self, limit: int) -> list[Notification]:
        now = self.clock()
        with self.db.session() as session:
            query = (
                select(Notification)
                .where(
                    or_(
                        (Notification.status == "pending") & (Notification.next_attempt_at <= now),
                        (Notification.status == "sending") & (Notification.claimed_until < now),
                    )
                )
                .order_by(Notification.next_attempt_at)
                .limit(limit)
            )
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = list(session.scalars(query).all())
            for row in rows:
                row.status = "sending"
                row.claimed_until = now + self.claim_for
        return rows

    def _sent(self, row: Notification, result: DeliveryResult) -> None:
        with self.db.session() as session:
            session.execute(
                update(Notification)
                .where(Notification.id == row.id)
                .values(
                    status="sent",
                    sent_at=self.clock(),
                    attempts=row.attempts + 1,
                    claimed_until=None,
                    last_error=None,
                )
            )
        result.sent.append(row.id)

    def _failed(self, row: Notification, error: str, result: DeliveryResult) -> None:
        attempts = row.attempts + 1
        now = self.clock()
        final = attempts >= self.max_attempts
        delay = min(timedelta(seconds=2**attempts), self.retry_max)
        log.warning(
            "notification %s (%s via %s) not delivered, attempt %d: %s",
            row.id,
            row.event,
            row.channel,
            attempts,
            error,
        )
        with self.db.session() as session:
            session.execute(
                update(Notification)
                .where(Notification.id == row.id)
                .values(
                    status="failed" if final else "pending",
                    attempts=attempts,
                    next_attempt_at=now + delay,
                    claimed_until=None,
                    last_error=error[:1000],
                )
            )
            if final:
                self.audit.append(
                    session,
                    EventContext(
                        actor="scheduler", client="scheduler", policy_version=self.policy_version()
                    ),
                    NewEvent(
                        "notification.failed",
                        target=row.channel,
                        decision="error",
                        reason=error[:1000],
                        details={
                            "notification_id": row.id,
                            "event": row.event,
                            "attempts": attempts,
                        },
                    ),
                )
        (result.failed if final else result.retrying).append(row.id)
