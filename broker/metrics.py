"""Prometheus `/metrics` for the web app, read from the database at scrape time.

Every number comes from the database, so any web worker answers the same and nothing is lost
when a worker or the scheduler restarts:

- ``broker_credentials_issued_total``: ``credentials.issued`` audit events;
- ``broker_denials_total{action}``: audit events with decision ``deny``;
- ``broker_grants{status}``: grants by status (``active`` = live grants);
- ``broker_revocations{status}``, ``broker_revocation_oldest_pending_seconds``;
- ``broker_revocation_latency_seconds``: queue-to-IAM time of revocations applied in the last
  hour (a summary's count and sum, plus the maximum as a gauge);
- ``broker_revocation_failures_total``: ``revocation.failed`` audit events;
- ``broker_scheduler_heartbeat_age_seconds{holder}``: time since each scheduler's last heartbeat;
- ``broker_policy_reloads_total{outcome}``: ``policy.reload`` (``in_force``) and
  ``policy.reload_refused`` (``refused``) audit events, from every process.

One exception, the policy this process serves (:class:`PolicyCollector`, also on the
scheduler's port): ``broker_policy_files_refused`` is 1 while the files on disk are refused and
an older policy stays in force, and ``broker_policy_info{version,source}`` names the version.
Every process watches the directory itself, so the workers agree within
``POLICY_RELOAD_SECONDS``; alert on ``max(broker_policy_files_refused) > 0``.

Job runs and failures of a scheduler process are process-local counters, served by the
scheduler itself on ``SCHEDULER_METRICS_PORT`` (see :mod:`broker.scheduler.core`): counting
them here would mean writing an audit event per job run.

The audit counts are kept as running totals (:class:`AuditTally`): a scrape reads only the
events appended since the previous scrape (by ``seq``, the primary key), so its cost does not
grow with the trail. A process counts the whole trail once, at its first scrape.
"""

from __future__ import annotations

import hmac
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.activity.metrics import ActivityCollector
from broker.audit.chain import HEAD_ID
from broker.db import Database, get_database
from broker.errors import Unauthenticated
from broker.models import (
    AuditEvent,
    AuditHead,
    Grant,
    Revocation,
    RevocationStatus,
    SchedulerLease,
    utcnow,
)
from broker.policy_store import PolicyStore, policy_store
from broker.web.httpmetrics import http_collectors

bp = Blueprint("metrics", __name__)
EXTENSION = "broker.metrics"

RELOAD_OUTCOMES = {"policy.reload": "in_force", "policy.reload_refused": "refused"}
"""Audit action of a policy reload → the ``outcome`` label of its counter."""


class AuditTally:
    """Audit events counted by action and decision, brought up to date one scrape at a time.

    Events are appended under the chain-head lock, which is held until commit, so once event
    ``n`` is visible every event before it is too: counting ``seq > through`` never misses one.
    """

    def __init__(self) -> None:
        self.through = 0
        self.counts: Counter[tuple[str, str | None]] = Counter()
        self._lock = threading.Lock()

    def refresh(self, session: Session) -> Counter[tuple[str, str | None]]:
        """Count the events appended since the last refresh; the totals."""
        with self._lock:
            head = session.scalar(select(AuditHead.seq).where(AuditHead.id == HEAD_ID)) or 0
            if head < self.through:  # a different trail (restored database): start over
                self.through, self.counts = 0, Counter()
            if head > self.through:
                for action, decision, count in session.execute(
                    select(AuditEvent.action, AuditEvent.decision, func.count())
                    .where(AuditEvent.seq > self.through, AuditEvent.seq <= head)
                    .group_by(AuditEvent.action, AuditEvent.decision)
                ):
                    self.counts[(action, decision)] += int(count)
                self.through = head
            return Counter(self.counts)


class DatabaseCollector:
    """A Prometheus collector whose every sample is read from the database at scrape time."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = database
        self.clock = clock
        self.tally = AuditTally()

    def describe(self) -> list[Metric]:
        """No up-front description: samples are only known at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Query the database and yield every metric."""
        now = self.clock()
        with self.db.read_session() as s:
            audit = self.tally.refresh(s)
            grants = s.execute(select(Grant.status, func.count()).group_by(Grant.status)).all()
            revocations = s.execute(
                select(Revocation.status, func.count()).group_by(Revocation.status)
            ).all()
            oldest = s.scalar(
                select(func.min(Revocation.created_at)).where(
                    Revocation.status == RevocationStatus.PENDING
                )
            )
            latencies = s.execute(
                select(Revocation.created_at, Revocation.applied_at).where(
                    Revocation.applied_at >= now - timedelta(hours=1)
                )
            ).all()
            leases = s.execute(select(SchedulerLease.holder, SchedulerLease.heartbeat_at)).all()
        by_action: Counter[str] = Counter()
        denials: Counter[str] = Counter()
        for (action, decision), count in audit.items():
            by_action[action] += count
            if decision == "deny":
                denials[action] += count

        yield _counter(
            "broker_credentials_issued", "Credentials issued.", by_action["credentials.issued"]
        )
        denied = CounterMetricFamily(
            "broker_denials", "Requests refused (audit decision deny).", labels=["action"]
        )
        for action, count in sorted(denials.items()):
            denied.add_metric([action], count)
        yield denied
        yield _counter(
            "broker_revocation_failures",
            "Failed revocation attempts.",
            by_action["revocation.failed"],
        )
        by_status = GaugeMetricFamily("broker_grants", "Grants by status.", labels=["status"])
        for status, count in grants:
            by_status.add_metric([status], count)
        yield by_status
        revs = GaugeMetricFamily("broker_revocations", "Revocations by status.", labels=["status"])
        counts = dict(revocations)
        for status in RevocationStatus:
            revs.add_metric([status.value], counts.get(status.value, 0))
        yield revs
        yield GaugeMetricFamily(
            "broker_revocation_oldest_pending_seconds",
            "Age of the oldest revocation not yet in place on AWS (0 when none).",
            value=(now - oldest).total_seconds() if oldest else 0.0,
        )
        waits = [(done - created).total_seconds() for created, done in latencies if done]
        yield SummaryMetricFamily(
            "broker_revocation_latency_seconds",
            "Queue-to-IAM time of revocations applied in the last hour.",
            count_value=len(waits),
            sum_value=sum(waits),
        )
        yield GaugeMetricFamily(
            "broker_revocation_latency_max_seconds",
            "Longest queue-to-IAM time in the last hour.",
            value=max(waits, default=0.0),
        )
        beats = GaugeMetricFamily(
            "broker_scheduler_heartbeat_age_seconds",
            "Seconds since each scheduler's last heartbeat.",
            labels=["holder"],
        )
        for holder, beat in leases:
            beats.add_metric([holder], (now - beat).total_seconds())
        yield beats
        outcomes = CounterMetricFamily(
            "broker_policy_reloads",
            "Policy reloads by all processes: new files put in force, or refused.",
            labels=["outcome"],
        )
        for action, outcome in RELOAD_OUTCOMES.items():
            outcomes.add_metric([outcome], by_action[action])
        yield outcomes


class PolicyCollector:
    """The policy this process serves, and whether the files on disk were refused."""

    def __init__(self, store: PolicyStore) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        """No up-front description: samples are only known at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """This process's view of its policy."""
        status = self.store.status
        yield GaugeMetricFamily(
            "broker_policy_files_refused",
            "1 while the policy files on disk are refused and an older policy stays in force.",
            value=1 if status.refused is not None else 0,
        )
        info = GaugeMetricFamily(
            "broker_policy_info",
            "The policy version in force in this process, and where it was loaded from.",
            labels=["version", "source"],
        )
        info.add_metric([status.version, status.source], 1)
        yield info


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def registry_for(database: Database, store: PolicyStore | None = None) -> CollectorRegistry:
    """A registry of the database collector and this process's policy (no other process data)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(database))
    registry.register(ActivityCollector(database))  # CloudTrail, detections, notifications
    if store is not None:
        registry.register(PolicyCollector(store))
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition: database-derived metrics, this process's policy, and HTTP
    request counts and latencies (from every worker when PROMETHEUS_MULTIPROC_DIR is set)."""
    _check_token()
    registry: CollectorRegistry | None = current_app.extensions.get(EXTENSION)
    if registry is None:
        registry = registry_for(get_database(current_app), policy_store(current_app))
        for collector in http_collectors(current_app):
            registry.register(collector)
        current_app.extensions[EXTENSION] = registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def _check_token() -> None:
    """With METRICS_TOKEN set, a scrape must send it as a bearer token."""
    expected = current_app.config.get("METRICS_TOKEN")
    if not expected:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), str(expected).encode()
    ):
        raise Unauthenticated(
            "/metrics needs `Authorization: Bearer <BROKER_METRICS_TOKEN>`.",
            hint="Configure the scraper with the broker's metrics token.",
        )
