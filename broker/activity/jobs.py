"""Building the activity services from settings, and running them as scheduler jobs.

The one place that reads the BROKER_CLOUDTRAIL_*, BROKER_NOTIFY_* and BROKER_SMTP_* settings:
the scheduler (:func:`add_activity_jobs`), ``broker activity ingest`` and the tests build the
same objects here. Jobs are added only when configured: a trail bucket for CloudTrail, a webhook
or a mail server for notifications.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from flask import Flask

from broker.activity.delivery import Channel, Deliverer, EmailChannel, WebhookChannel
from broker.activity.detections import DetectionEngine
from broker.activity.ingest import CloudTrailIngestor, IngestResult, PolicyView, TrailSource
from broker.activity.metrics import ActivityCollector
from broker.activity.notify import Channels, NotificationProducer
from broker.activity.responses import DetectionResponder
from broker.aws import make_client
from broker.db import get_database
from broker.policy_store import get_policy
from broker.services import services

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from broker.scheduler.core import Scheduler

log = logging.getLogger(__name__)


def trail_source(config: Mapping[str, Any]) -> TrailSource | None:
    """The trail to read, or None when BROKER_CLOUDTRAIL_BUCKET is not set."""
    bucket = config.get("CLOUDTRAIL_BUCKET")
    if not bucket:
        return None
    return TrailSource(
        bucket=str(bucket),
        prefix=str(config.get("CLOUDTRAIL_PREFIX") or ""),
        accounts=tuple(config.get("CLOUDTRAIL_ACCOUNTS") or ()),
        queue_url=config.get("CLOUDTRAIL_QUEUE_URL") or None,
        lookback=timedelta(minutes=int(config.get("CLOUDTRAIL_LOOKBACK_MINUTES", 30))),
        backfill=timedelta(hours=int(config.get("CLOUDTRAIL_BACKFILL_HOURS", 24))),
        keep_records=bool(config.get("CLOUDTRAIL_STORE_RECORDS", False)),
        claim_stale=timedelta(seconds=int(config.get("CLOUDTRAIL_CLAIM_STALE_SECONDS", 600))),
    )


def policy_views(app: Flask, clock: Callable[[], datetime]) -> Callable[[], PolicyView]:
    """A function giving the detection rules and responder of the policy in force now."""
    engines: dict[str, DetectionEngine] = {}

    def view() -> PolicyView:
        snapshot = get_policy(app)
        engine = engines.get(snapshot.version)
        if engine is None:
            policy = snapshot.loaded.policy
            engines.clear()
            engine = engines[snapshot.version] = DetectionEngine(
                policy.detections, policy.entitlements
            )
        shared = services(app)
        responder = DetectionResponder(
            get_database(app), snapshot, shared.issuer, shared.role_limits, clock=clock
        )
        return PolicyView(engine, responder)

    return view


def _client(app: Flask, service: str) -> Any:
    cfg = app.config
    return make_client(
        service,
        region=str(cfg.get("CLOUDTRAIL_REGION") or cfg["AWS_REGION"]),
        endpoint_url=cfg.get("AWS_ENDPOINT_URL"),
        timeout=30.0,
    )


def build_ingestor(
    app: Flask,
    *,
    clock: Callable[[], datetime],
    holder: str,
    keep_going: Callable[[], bool] = lambda: True,
) -> CloudTrailIngestor | None:
    """The CloudTrail reader for the configured trail, or None without one."""
    source = trail_source(app.config)
    if source is None:
        return None
    return CloudTrailIngestor(
        get_database(app),
        _client(app, "s3"),
        source,
        sqs=_client(app, "sqs") if source.queue_url else None,
        policy=policy_views(app, clock),
        clock=clock,
        holder=holder,
        keep_going=keep_going,
    )


def notification_channels(config: Mapping[str, Any]) -> dict[str, Channel]:
    """The configured channels by name (``webhook``, ``email``)."""
    found: dict[str, Channel] = {}
    timeout = float(config.get("NOTIFY_TIMEOUT_SECONDS", 10.0))
    if config.get("NOTIFY_WEBHOOK_URL"):
        found["webhook"] = WebhookChannel(
            str(config["NOTIFY_WEBHOOK_URL"]),
            config.get("NOTIFY_WEBHOOK_SECRET") or None,
            shape=str(config.get("NOTIFY_WEBHOOK_FORMAT") or "json"),
            timeout=timeout,
        )
    if config.get("SMTP_HOST"):
        found["email"] = EmailChannel(
            str(config["SMTP_HOST"]),
            int(config.get("SMTP_PORT", 587)),
            str(config.get("SMTP_FROM") or ""),
            username=config.get("SMTP_USERNAME") or None,
            password=config.get("SMTP_PASSWORD") or None,
            starttls=bool(config.get("SMTP_STARTTLS", True)),
            ca_file=config.get("SMTP_CA_FILE") or None,
            timeout=timeout,
        )
    return found


def build_notifier(
    app: Flask, *, clock: Callable[[], datetime]
) -> tuple[NotificationProducer, Deliverer] | None:
    """The outbox producer and deliverer, or None when no channel is configured."""
    cfg = app.config
    channels = notification_channels(cfg)
    if not channels:
        return None
    database = get_database(app)
    producer = NotificationProducer(
        database,
        Channels(webhook="webhook" in channels, email="email" in channels),
        evaluator=lambda: get_policy(app).evaluator,
        clock=clock,
        events=tuple(cfg.get("NOTIFY_EVENTS") or ()),
        security_emails=tuple(cfg.get("NOTIFY_EMAILS") or ()),
        base_url=cfg.get("BASE_URL"),
        ending_soon=timedelta(minutes=int(cfg.get("NOTIFY_ENDING_SOON_MINUTES", 15))),
    )
    deliverer = Deliverer(
        database,
        channels,
        clock=clock,
        max_attempts=int(cfg.get("NOTIFY_MAX_ATTEMPTS", 8)),
        retry_max=timedelta(seconds=int(cfg.get("NOTIFY_RETRY_MAX_SECONDS", 600))),
        policy_version=lambda: get_policy(app).version,
    )
    return producer, deliverer


class ActivityJobs:
    """One scheduler's activity work: read CloudTrail, then queue and send notifications."""

    def __init__(self, scheduler: Scheduler) -> None:
        app = scheduler.app
        self.scheduler = scheduler
        self.ingestor = build_ingestor(
            app,
            clock=scheduler.clock,
            holder=scheduler.lease.holder,
            keep_going=lambda: scheduler.running,
        )
        self.notifier = build_notifier(app, clock=scheduler.clock)
        self.queue_seconds = float(app.config.get("CLOUDTRAIL_QUEUE_SECONDS", 2.0))
        self.poll_seconds = float(app.config.get("CLOUDTRAIL_POLL_SECONDS", 60.0))
        self.notify_seconds = float(app.config.get("NOTIFY_SECONDS", 5.0))
        self._next_scan = 0.0

    @property
    def cloudtrail_interval(self) -> float:
        """Seconds between ticks: the queue's pace when there is one, else the scan's."""
        queued = self.ingestor is not None and self.ingestor.source.queue_url
        return self.queue_seconds if queued else self.poll_seconds

    def cloudtrail(self) -> IngestResult:
        """Read announced files, scan the bucket when due, and put any responses on AWS now."""
        result = IngestResult()
        if self.ingestor is None:
            return result
        result.files.extend(self.ingestor.poll_queue().files)
        if time.monotonic() >= self._next_scan:
            result.files.extend(self.ingestor.scan().files)
            self._next_scan = time.monotonic() + self.poll_seconds
        if result.responses:
            self.scheduler.revoke()  # the deny reaches the role now, not at the next sweep
        read = [f for f in result.files if f.status in ("done", "malformed")]
        if read:
            log.info(
                "CloudTrail: %d file(s), %d record(s), %d attributed, %d malformed, "
                "%d detection(s), %d response(s)",
                len(read),
                sum(f.records for f in read),
                sum(f.attributed for f in read),
                len(result.with_status("malformed")),
                sum(len(f.detections) for f in read),
                result.responses,
            )
        return result

    def notify(self) -> None:
        """Queue what happened, then send what is due."""
        if self.notifier is None:
            return
        producer, deliverer = self.notifier
        producer.run()
        deliverer.run()


_JOBS: weakref.WeakKeyDictionary[Scheduler, ActivityJobs] = weakref.WeakKeyDictionary()


def activity_jobs(scheduler: Scheduler) -> ActivityJobs:
    """The scheduler's activity jobs, built (and its metrics registered) on first use."""
    found = _JOBS.get(scheduler)
    if found is None:
        found = _JOBS[scheduler] = ActivityJobs(scheduler)
        scheduler.registry.register(ActivityCollector(scheduler.db, scheduler.clock))
    return found


def add_activity_jobs(scheduler: Scheduler, aps: BaseScheduler) -> None:
    """Add the CloudTrail and notification jobs to a starting scheduler, where configured."""
    jobs = activity_jobs(scheduler)
    if jobs.ingestor is not None:
        aps.add_job(
            _counted(scheduler, "cloudtrail", jobs.cloudtrail),
            "interval",
            seconds=jobs.cloudtrail_interval,
            id="cloudtrail",
            next_run_time=datetime.now().astimezone(),
        )
    if jobs.notifier is not None:
        aps.add_job(
            _counted(scheduler, "notify", jobs.notify),
            "interval",
            seconds=jobs.notify_seconds,
            id="notify",
        )


def _counted(scheduler: Scheduler, name: str, work: Callable[[], object]) -> Callable[[], None]:
    """Run a job, counting runs and failures in the scheduler's own metrics."""

    def run() -> None:
        scheduler.runs.labels(job=name).inc()
        try:
            work()
        except Exception:
            scheduler.failures.labels(job=name).inc()
            log.exception("scheduler job %s failed", name)

    return run
