"""Prometheus metrics of the activity work, read from the database at scrape time.

- ``broker_cloudtrail_files{status}``: log files by status (``done``, ``malformed``, ``claimed``);
- ``broker_cloudtrail_records_total`` / ``broker_cloudtrail_attributed_records_total``: records
  read from files settled and still remembered (files are forgotten after the retention);
- ``broker_cloudtrail_last_file_age_seconds``: time since the last file was settled;
- ``broker_activity_records``: attributed records stored, and ``..._after_grant_end`` of them;
- ``broker_detections_total{rule,response,outcome}``: detections and what was done;
- ``broker_notifications{event,channel,status}``: the notification outbox.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select

from broker.activity.notify import outbox_counts
from broker.db import Database
from broker.models import ActivityRecord, CloudTrailFile, Detection, utcnow


class ActivityCollector:
    """A Prometheus collector whose samples are database queries at scrape time."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = database
        self.clock = clock

    def describe(self) -> list[Metric]:
        """No up-front description: samples are only known at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Query the database and yield every metric."""
        now = self.clock()
        with self.db.read_session() as s:
            files = s.execute(
                select(
                    CloudTrailFile.status,
                    func.count(),
                    func.coalesce(func.sum(CloudTrailFile.records), 0),
                    func.coalesce(func.sum(CloudTrailFile.attributed), 0),
                ).group_by(CloudTrailFile.status)
            ).all()
            last = s.scalar(select(func.max(CloudTrailFile.done_at)))
            stored = s.scalar(select(func.count()).select_from(ActivityRecord)) or 0
            late = (
                s.scalar(
                    select(func.count())
                    .select_from(ActivityRecord)
                    .where(ActivityRecord.after_grant_end.is_(True))
                )
                or 0
            )
            detections = s.execute(
                select(
                    Detection.rule_id, Detection.response, Detection.outcome, func.count()
                ).group_by(Detection.rule_id, Detection.response, Detection.outcome)
            ).all()
            outbox = outbox_counts(s)
        by_status = GaugeMetricFamily(
            "broker_cloudtrail_files", "CloudTrail log files by status.", labels=["status"]
        )
        counts = {status: (n, r, a) for status, n, r, a in files}
        for status in ("claimed", "done", "malformed"):
            by_status.add_metric([status], counts.get(status, (0, 0, 0))[0])
        yield by_status
        yield CounterMetricFamily(
            "broker_cloudtrail_records",
            "CloudTrail records read from settled files.",
            value=sum(int(r) for _, r, _ in counts.values()),
        )
        yield CounterMetricFamily(
            "broker_cloudtrail_attributed_records",
            "CloudTrail records made with broker-issued credentials.",
            value=sum(int(a) for _, _, a in counts.values()),
        )
        yield GaugeMetricFamily(
            "broker_cloudtrail_last_file_age_seconds",
            "Seconds since the last CloudTrail file was settled (0 when none).",
            value=(now - last).total_seconds() if last else 0.0,
        )
        yield GaugeMetricFamily(
            "broker_activity_records", "Attributed records stored.", value=int(stored)
        )
        yield GaugeMetricFamily(
            "broker_activity_records_after_grant_end",
            "Attributed records made after their grant had ended.",
            value=int(late),
        )
        fired = CounterMetricFamily(
            "broker_detections",
            "Detections by rule, response and outcome.",
            labels=["rule", "response", "outcome"],
        )
        for rule, response, outcome, count in detections:
            fired.add_metric([rule, response, outcome], int(count))
        yield fired
        queued = GaugeMetricFamily(
            "broker_notifications",
            "Notification outbox rows by event, channel and status.",
            labels=["event", "channel", "status"],
        )
        for event, channel, status, count in outbox:
            queued.add_metric([event, channel, status], count)
        yield queued
