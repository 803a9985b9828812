"""Notifications to a local webhook receiver (signature checked) and a local SMTP server that
insists on STARTTLS: each event type delivered once, retried after the receiver fails, and never
containing a secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from activitybed import ActivityBed, make_bed
from receivers import MailServer, WebhookReceiver, free_port
from schedbed import Clock, issue, wait_for
from sqlalchemy import func, select
from trailbed import assume_role_record, run_instances

from broker.activity.delivery import Deliverer, DeliveryError, EmailChannel, WebhookChannel
from broker.activity.jobs import build_notifier
from broker.db import Database, get_database
from broker.models import ActivityCursor, Grant, Notification, Revocation, RevocationStatus, utcnow
from broker.scheduler import Scheduler

SECRET = "webhook-signing-secret-for-tests-0123456789"
SMTP_PASSWORD = "smtp-password-never-in-a-message"
EVENTS = [
    "approval_requested",
    "detection",
    "grant_ending",
    "request_decided",
    "revocation_failing",
]


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def notified(
    database: Database, moto_server: Any, tmp_path: Path, hook: WebhookReceiver
) -> Iterator[tuple[ActivityBed, MailServer]]:
    """An activity bed that sends notifications to `hook` and to a STARTTLS mail server (not
    started: a test starts it when it wants mail to be accepted)."""
    mail = MailServer(tmp_path)
    bed = make_bed(
        database,
        moto_server,
        tmp_path,
        BASE_URL="https://broker.example.com",
        NOTIFY_WEBHOOK_URL=hook.url,
        NOTIFY_WEBHOOK_SECRET=SECRET,
        NOTIFY_EMAILS=["security@example.com"],
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=mail.port,
        SMTP_FROM="broker@example.com",
        SMTP_USERNAME="",
        SMTP_CA_FILE=str(mail.ca_file),
        NOTIFY_SECONDS=0.5,
    )
    yield bed, mail
    mail.stop()
    bed.app.extensions["broker.db"].dispose()


def _verified(delivery: Any) -> dict[str, Any]:
    """The body of a webhook delivery whose signature checks out (computed here, independently)."""
    stamp = delivery.headers["X-Broker-Timestamp"]
    assert abs(time.time() - int(stamp)) < 300
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + delivery.body, hashlib.sha256)
    assert hmac.compare_digest(delivery.headers["X-Broker-Signature"], "v1=" + expected.hexdigest())
    body: dict[str, Any] = json.loads(delivery.body)
    return body


def _make_every_event(bed: ActivityBed) -> list[str]:
    """Cause one of each notified event; return the secrets handed out on the way."""
    secrets: list[str] = []
    sam = bed.token("sam@example.com", ("sre",))
    approver = bed.token("sec@example.com", ("security",))  # known to the broker: gets the mail
    response = bed.call(
        "POST", "/grants", sam, json={"entitlement": "app-admin", "reason": "incident 42"}
    )
    assert response.status_code == 202, response.json
    pending = response.json["grant"]["id"]
    response = bed.call("POST", f"/grants/{pending}/approve", approver, json={"comment": "go"})
    assert response.status_code == 200, response.json

    alice = issue(bed, bed.token("alice@example.com", ("developers",)), "app-read")
    cora = issue(bed, bed.token("cora@contractor.example", ("developers",)), "app-read")
    for issued in (alice, cora):
        secrets += [issued["credentials"]["SecretAccessKey"], issued["credentials"]["SessionToken"]]
    with get_database(bed.app).session() as session:  # alice's grant ends in 10 minutes
        grant = session.get_one(Grant, alice["grant_id"])
        grant.starts_at = utcnow() - timedelta(hours=1)
        grant.expires_at = utcnow() + timedelta(minutes=10)

    key = bed.key_of(cora)
    assume = assume_role_record(key, utcnow())
    secrets.append(assume["responseElements"]["credentials"]["sessionToken"])
    assert bed.trail is not None
    bed.trail.put([assume, run_instances(key, utcnow(), "p4d.24xlarge")], at=utcnow())
    assert bed.ingestor().scan().responses == 1

    with get_database(bed.app).session() as session:  # a deny IAM refuses: the role is gone
        session.add(
            Revocation(
                role_arn="arn:aws:iam::123456789012:role/deleted-meanwhile",
                scope="person",
                source_identity="someone",
                cutoff=utcnow(),
                drop_after=utcnow() + timedelta(hours=1),
                status=RevocationStatus.PENDING,
                next_attempt_at=utcnow(),
            )
        )
    assert Scheduler(bed.app, sleep=lambda _s: None).revoke().failed
    return secrets


def test_each_event_is_delivered_once_retried_and_without_secrets(
    notified: tuple[ActivityBed, MailServer], hook: WebhookReceiver
) -> None:
    bed, mail = notified
    clock = Clock(utcnow())
    built = build_notifier(bed.app, clock=clock)
    assert built is not None
    producer, deliverer = built
    assert producer.run() == 0  # the first run only places the cursor: no history is sent
    secrets = _make_every_event(bed)
    with get_database(bed.app).read_session() as session:  # requests queued nothing themselves
        assert session.scalar(select(func.count()).select_from(Notification)) == 0

    clock.now = utcnow()
    queued = producer.run()
    assert queued == 10  # five events, each to the webhook and by mail
    hook.fail_next = 2  # the receiver is down for two requests; the mail server is not up yet
    first = deliverer.run()
    assert (len(first.sent), len(first.retrying)) == (3, 7)
    mail.start()
    clock.now += timedelta(minutes=1)  # past the backoff
    second = deliverer.run()
    assert (len(second.sent), second.failed) == (7, [])
    clock.now += timedelta(minutes=1)
    assert producer.run() == 0 and not deliverer.run().sent  # nothing twice

    bodies = [_verified(d) for d in hook.accepted]
    assert sorted(b["event"] for b in bodies) == EVENTS
    assert len({d.headers["X-Broker-Delivery"] for d in hook.accepted}) == 5
    assert len(hook.deliveries) == 7  # two refused, then five accepted
    by_event = {b["event"]: b for b in bodies}
    assert by_event["approval_requested"]["link"] == "https://broker.example.com/approvals"
    assert "incident 42" in by_event["approval_requested"]["text"]
    assert by_event["request_decided"]["facts"]["decision"] == "approved"
    assert by_event["detection"]["facts"]["rule"] == "crypto-mining-contractor"
    assert by_event["detection"]["facts"]["outcome"] == "revoked"
    assert "deleted-meanwhile" in by_event["revocation_failing"]["subject"]
    assert by_event["grant_ending"]["facts"]["person"] == "alice@example.com"

    recipients = sorted((m["X-Broker-Event"], tuple(to)) for to, m, _ in mail.messages)
    assert recipients == [
        ("approval_requested", ("sec@example.com",)),
        ("detection", ("security@example.com",)),
        ("grant_ending", ("alice@example.com",)),
        ("request_decided", ("sam@example.com",)),
        ("revocation_failing", ("security@example.com",)),
    ]
    assert all(session.ssl for _, _, session in mail.messages)  # every mail came over STARTTLS

    everything = [d.body.decode() for d in hook.deliveries] + [
        m.as_string() for _, m, _ in mail.messages
    ]
    with get_database(bed.app).read_session() as session:
        everything += [json.dumps(n.payload) for n in session.scalars(select(Notification))]
    for secret in [*secrets, SECRET, SMTP_PASSWORD]:
        assert not any(secret in text for text in everything)


def test_mail_is_never_sent_without_starttls(tmp_path: Path) -> None:
    with MailServer(tmp_path, starttls=False) as plain:
        channel = EmailChannel(
            "127.0.0.1", plain.port, "broker@example.com", ca_file=str(plain.ca_file)
        )
        row = Notification(
            id="n1", recipients=["a@example.com"], payload={"subject": "s", "text": "t"}
        )
        with pytest.raises(DeliveryError, match="does not offer STARTTLS"):
            channel.send(row)
    assert plain.messages == []


def test_a_receiver_that_never_answers_ends_failed_and_audited(
    notified: tuple[ActivityBed, MailServer], hook: WebhookReceiver
) -> None:
    bed, _ = notified
    clock = Clock(utcnow())
    built = build_notifier(bed.app, clock=clock)
    assert built is not None
    producer, _ = built
    producer.run()
    bed.call(
        "POST",
        "/grants",
        bed.token("sam@example.com", ("sre",)),
        json={"entitlement": "app-admin", "reason": "x"},
    )
    producer.run()
    dead = Deliverer(
        get_database(bed.app),
        {"webhook": WebhookChannel(f"http://127.0.0.1:{free_port()}/", SECRET, timeout=2)},
        clock=clock,
        max_attempts=2,
    )
    assert dead.run().retrying and not dead.run().sent  # not due yet: backoff
    clock.now += timedelta(minutes=5)
    result = dead.run()
    assert result.failed
    with get_database(bed.app).read_session() as session:
        row = session.scalars(select(Notification).where(Notification.channel == "webhook")).one()
        assert (row.status, row.attempts) == ("failed", 2)
        assert row.last_error == "webhook unreachable (ConnectionError)"  # never the URL


def test_the_scheduler_sends_a_detection_within_seconds(
    notified: tuple[ActivityBed, MailServer], hook: WebhookReceiver
) -> None:
    bed, mail = notified
    mail.start()
    scheduler = Scheduler(bed.app, sweep_seconds=60)
    scheduler.start()
    try:
        wait_for(lambda: _cursor_placed(bed), timeout=10)
        cora = issue(bed, bed.token("cora@contractor.example", ("developers",)), "app-read")
        assert bed.trail is not None
        bed.trail.put([run_instances(bed.key_of(cora), utcnow(), "p4d.24xlarge")], at=utcnow())
        assert bed.ingestor().scan().responses == 1
        wait_for(lambda: any(_verified(d)["event"] == "detection" for d in hook.accepted), 10)
    finally:
        scheduler.stop()


def _cursor_placed(bed: ActivityBed) -> bool:
    with get_database(bed.app).read_session() as session:
        return session.get(ActivityCursor, "notify:audit") is not None


def test_the_slack_shape_is_an_incoming_webhook_message(hook: WebhookReceiver) -> None:
    channel = WebhookChannel(hook.url, None, shape="slack")
    payload = {"event": "detection", "subject": "[critical] detection x", "text": "cora: ec2"}
    channel.send(Notification(id="n1", event="detection", recipients=[], payload=payload))
    body = json.loads(hook.accepted[0].body)
    assert body["text"] == "[critical] detection x\ncora: ec2"
    assert body["blocks"][0] == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "*[critical] detection x*\ncora: ec2"},
    }
    assert "X-Broker-Signature" not in hook.accepted[0].headers  # Slack's URL is its secret
